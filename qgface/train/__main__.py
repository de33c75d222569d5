"""``python -m qgface.train [CONFIG] [key=value ...]`` (see ``qgface.train.cli``)."""

import sys

from qgface.train.cli import main

sys.exit(main(sys.argv[1:]))
