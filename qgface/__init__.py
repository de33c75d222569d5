"""qgface: quality-guided joint training and evaluation of mixed-quality face recognition models."""

__version__ = "0.1.0"
