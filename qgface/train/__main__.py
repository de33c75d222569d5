"""``python -m qgface.train [CONFIG] [key=value ...]`` (see ``qgface.train.cli``)."""

import sys

from qgface.train.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
