"""Prune the original example's CNN on MNIST with MXNet (Gluon), bank-balanced at 90 %.

    python examples/mxnet_pruning_mnist.py --out docs/results/mxnet_bank64_90.json

Dense warm-up (2 epochs), the cubic ramp to the target (3 epochs), fine-tuning at fixed sparsity
(3 epochs). Prints one line per epoch and writes the results (settings, accuracy, per-layer
sparsity, curves, pruner state; no weights) as JSON. The training loop itself, with the pruner's
three calls (``prepare()`` after ``backward()``, ``prune()`` after ``trainer.step()``,
``sparsity()``), is ``train_mnist`` in ``pruning_tools/mxnet_mnist.py``.
"""

import json
import os
from pathlib import Path

import click

os.environ.setdefault("OMP_NUM_THREADS", "2")  # MXNet reads it at import time

from pruning_tools.mxnet_mnist import train_mnist  # noqa: E402


def to_plain(value):
    """JSON-ready copy: numpy arrays and scalars become lists and numbers."""
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


@click.command()
@click.option("--data-dir", default=None, help="Directory with the MNIST *-ubyte.gz files (default: searched).")
@click.option("--sparsity", default=0.9, show_default=True, help="Target sparsity of every conv / dense weight.")
@click.option("--balance", default="fix", show_default=True, type=click.Choice(["fix", "none", "global"]))
@click.option("--bank-size", default=64, show_default=True)
@click.option("--epochs", default=None, type=int, help="Default: the recipe's 8.")
@click.option("--seed", default=0, show_default=True)
@click.option("--limit", default=None, type=int, help="Use only the first N train and test images (quick runs).")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the results JSON here.")
def main(data_dir, sparsity, balance, bank_size, epochs, seed, limit, out):
    def report(record):
        click.echo(f"epoch {record['epoch']}: test accuracy {record['test_accuracy']:.4f}, "
                   f"loss {record['train_loss']:.4f}, sparsity {record['sparsity']:.4f} "
                   f"(target {record['target']:.4f}), {record['seconds']:.0f} s")

    result = train_mnist(data_dir, sparsity=sparsity, balance=balance, bank_size=bank_size, epochs=epochs,
                         seed=seed, limit=limit, on_epoch=report)
    result.pop("weights")
    for note in result["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"test accuracy {result['test_accuracy']:.4f} at total sparsity {result['total_sparsity']:.4f}, "
               f"every bank within budget: {result['balanced']}, {result['wall_seconds']:.0f} s")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(to_plain(result), indent=1) + "\n")
        click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
