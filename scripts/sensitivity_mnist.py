"""Sensitivity-guided vs uniform prune_dict on the MNIST CNN, at the same overall sparsity.

1. train the CNN dense (``--dense-epochs``) and sweep its four weights one at a time, one-shot,
   scoring accuracy on the last ``--score-images`` training images (the test set stays unseen);
2. suggest a prune_dict at the overall sparsity a uniform ``--uniform`` bank-balanced setting reaches;
3. train the uniform and the suggested prune_dict with the same gradual schedule (``train_mnist``),
   one after the other, and write the measured test accuracies.

Writes to ``--out``: sensitivity.json/.csv, sensitivity.png, targets.png, comparison.json.

    python scripts/sensitivity_mnist.py --out docs/sensitivity            # full run (slow on CPU)
    python scripts/sensitivity_mnist.py --limit 500 --epochs 1 --out /tmp/s   # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pruning_tools.mnist import load_mnist
from pruning_tools.mnist_train import evaluate, to_tensor, train_mnist
from pruning_tools.sensitivity import overall_sparsity, predicted_drop, suggest_prune_dict, sweep
from pruning_tools.sensitivity_plot import plot_curves, plot_targets

LEVELS = (0.5, 0.75, 0.875, 0.90625, 0.9375, 0.96875, 0.984375)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def train(label: str, **kwargs) -> dict:
    log(f"training {label}: {kwargs}")
    result = train_mnist(on_epoch=lambda r: log(f"  {label} epoch {r['epoch']}: test {r['test_accuracy']:.4f}, "
                                                  f"sparsity {r['sparsity']:.4f}, {r['seconds']:.0f} s"), **kwargs)
    log(f"{label}: test accuracy {result['test_accuracy']:.4f}, total sparsity {result['total_sparsity']:.4f}")
    return result


def summary(result: dict) -> dict:
    keys = ("test_accuracy", "total_sparsity", "layer_sparsity", "balanced", "wall_seconds", "epochs")
    return {k: result[k] for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sensitivity_mnist"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dense-epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each pruned training")
    parser.add_argument("--uniform", type=float, default=0.9)
    parser.add_argument("--bank-size", type=int, default=64)
    parser.add_argument("--score-images", type=int, default=5000)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    dense = train("dense", data_dir=args.data_dir, sparsity=0.0, epochs=args.dense_epochs, limit=args.limit,
                  seed=args.seed)
    data = load_mnist(args.data_dir).head(args.limit)
    images = to_tensor(data.train_images[-args.score_images:])
    labels = torch.from_numpy(data.train_labels[-args.score_images:].astype("int64"))
    table = sweep(dense["model"], lambda m: evaluate(m, images, labels), levels=LEVELS, balance="fix",
                  bank_size=args.bank_size, progress=False)
    table.save_json(args.out / "sensitivity.json")
    table.save_csv(args.out / "sensitivity.csv")
    plot_curves(table, args.out / "sensitivity.png",
                title=f"MNIST CNN: accuracy on {len(labels)} training images, one weight pruned one-shot "
                      f"(bank {args.bank_size})")
    uniform = {name: args.uniform for name in table.names}
    target = overall_sparsity(table, uniform)
    suggested = suggest_prune_dict(table, target)
    log(f"uniform {args.uniform} reaches {target:.4f} overall; suggested {suggested} "
        f"({overall_sparsity(table, suggested):.4f} overall)")
    plot_targets(table, {"suggested": suggested, f"uniform {args.uniform}": uniform}, args.out / "targets.png",
                 title=f"Per-weight sparsity at the same overall sparsity (bank {args.bank_size})")

    common = dict(data_dir=args.data_dir, balance="fix", bank_size=args.bank_size, epochs=args.epochs,
                  limit=args.limit, seed=args.seed)
    runs = {}
    for label, prune_dict in (("uniform", uniform), ("suggested", suggested)):
        runs[label] = summary(train(label, prune_dict=prune_dict, **common))
        runs[label]["prune_dict"] = prune_dict
        runs[label]["predicted_drop"] = predicted_drop(table, prune_dict)
        (args.out / "comparison.json").write_text(json.dumps({
            "settings": {**vars(args), "out": str(args.out), "levels": list(LEVELS)},
            "dense": summary(dense), "target_overall_sparsity": target, "runs": runs,
            "wall_seconds": time.perf_counter() - started,
        }, indent=1) + "\n")
    for label, run in runs.items():
        log(f"{label}: test accuracy {run['test_accuracy']:.4f} at total sparsity {run['total_sparsity']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
