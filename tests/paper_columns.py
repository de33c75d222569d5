"""The first columns of results.csv as the paper's table reads them, written out by hand once for the
tests (the code's own list is ``qgface.vocab.columns``; tests compare against this independent copy)."""

RESULTS_HEADER = [
    "run",
    "config",
    "checkpoint",
    "step",
    "scface_d1",
    "scface_d2",
    "scface_d3",
    "tinyface_rank1",
    "ijbb_tar_at_1e-4",
    "ijbc_tar_at_1e-4",
    "hq_avg",
    "all_avg",
]
