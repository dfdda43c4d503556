"""Benchmarks, shipped with the package so that users measure their own machine: one timing harness
(``harness``), one model zoo (``models``, also used by the examples) and one module per subject.
Run them with ``pruning-tools bench`` (``--inference``, ``--structured``) or ``python -m`` on a module."""
