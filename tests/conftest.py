"""Shared pytest set-up. `slurm_cluster` (beside this file) starts a real throw-away Slurm cluster."""

pytest_plugins = ["slurm_cluster"]
