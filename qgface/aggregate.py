"""``python -m qgface.aggregate RUN_DIR``: the entry point of :mod:`qgface.eval.aggregate`."""

import sys

from qgface.eval.aggregate import main

if __name__ == "__main__":
    sys.exit(main())
