"""Benchmarks of pruning-tools (not installed with the package): one timing harness (``harness``), one
model zoo (``models``, also used by the examples) and one script per subject. Run from the repository
root: ``python -m benchmarks.masks``, ``python benchmarks/kernel.py``, or ``pruning-tools bench``."""
