"""The paper's table and results.csv's headline block (docs/method.md §7).

``all_avg`` is the plain mean of the paper's six columns before it; ``ijbc_tar_at_1e-4`` is in
the headline block but not in the paper's average.
"""

from __future__ import annotations

PAPER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("SCface d1", "scface_d1"),
    ("SCface d2", "scface_d2"),
    ("SCface d3", "scface_d3"),
    ("TinyFace", "tinyface_rank1"),
    ("IJB-B", "ijbb_tar_at_1e-4"),
    ("HQ Avg", "hq_avg"),
    ("All Avg", "all_avg"),
)
"""(title, results.csv key) of the paper's ablation table, in its order"""

ALL_AVG = "all_avg"
ALL_AVG_PARTS: tuple[str, ...] = tuple(key for _, key in PAPER_COLUMNS if key != ALL_AVG)
"""the columns whose mean is all_avg"""

HEADLINE: tuple[str, ...] = (*ALL_AVG_PARTS[:5], "ijbc_tar_at_1e-4", ALL_AVG_PARTS[5], ALL_AVG)
"""the headline block of results.csv, after run, config, checkpoint, step"""

PAPER_BENCHMARKS: tuple[str, ...] = ("hq", "tinyface", "scface", "ijbb")
"""the benchmarks whose results fill the paper's columns"""
