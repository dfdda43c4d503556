"""Mask engine benchmark: the same as ``pruning-tools bench`` (see ``docs/benchmarks.md``).

python benchmarks/bench_masks.py            # full run (ResNet-50, BERT-like), a few minutes
python benchmarks/bench_masks.py --quick    # tiny models, seconds
"""

from pruning_tools.bench import bench

if __name__ == "__main__":
    bench()
