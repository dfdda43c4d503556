"""Sensitivity-guided vs uniform prune_dict on the MNIST CNN, at the same overall sparsity.

1. train the CNN dense (``--dense-epochs``; or load ``--dense-weights`` when that file exists) and
   sweep its four weights one at a time, one-shot, scored on the last ``--score-images`` training
   images (the test set stays unseen): by minus the cross-entropy (``--score loss``, used for the
   suggestion) and by accuracy (for the figure);
2. suggest a prune_dict at the overall sparsity a uniform ``--uniform`` bank-balanced setting reaches;
3. train the prune_dicts named in ``--runs`` with the same gradual schedule (``train_mnist``), one
   after the other, merging the measured test accuracies into ``comparison.json``.

Writes to ``--out``: sensitivity.json/.csv (the table used), sensitivity_accuracy.json/.csv,
sensitivity.png, targets.png, comparison.json.

    python scripts/sensitivity_mnist.py --out docs/sensitivity            # full run (slow on CPU)
    python scripts/sensitivity_mnist.py --limit 500 --epochs 1 --out /tmp/s   # smoke test
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pruning_tools.atomic import write_text
from pruning_tools.demo.data import load_mnist
from pruning_tools.demo.sensitivity_plots import plot_curves, plot_targets
from pruning_tools.demo.torch_backend import SimpleCNN, evaluate, to_tensor
from pruning_tools.demo.trainer import train_mnist
from pruning_tools.integrity import load_file, save_file
from pruning_tools.sensitivity import overall_sparsity, predicted_drop, suggest_prune_dict, sweep

LEVELS = (0.5, 0.75, 0.8125, 0.875, 0.90625, 0.9375, 0.96875, 0.984375)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def train(label: str, **kwargs) -> dict:
    log(f"training {label}: {kwargs}")
    result = train_mnist(
        on_epoch=lambda r: log(
            f"  {label} epoch {r['epoch']}: test {r['test_accuracy']:.4f}, "
            f"sparsity {r['sparsity']:.4f}, {r['seconds']:.0f} s"
        ),
        **kwargs,
    )
    log(f"{label}: test accuracy {result['test_accuracy']:.4f}, total sparsity {result['total_sparsity']:.4f}")
    return result


def summary(result: dict) -> dict:
    keys = ("test_accuracy", "total_sparsity", "layer_sparsity", "balanced", "wall_seconds", "epochs")
    return {k: result[k] for k in keys}


def dense_model(args) -> tuple[torch.nn.Module, dict | None]:
    """The dense CNN: loaded from ``args.dense_weights`` when it exists, else trained and saved there."""
    if args.dense_weights.exists():
        model = SimpleCNN()
        model.load_state_dict(load_file(args.dense_weights)[0])
        log(f"dense weights from {args.dense_weights}")
        return model, None
    result = train(
        "dense", data_dir=args.data_dir, sparsity=0.0, epochs=args.dense_epochs, limit=args.limit, seed=args.seed
    )
    args.dense_weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in result["model"].state_dict().items()}, args.dense_weights)
    return result["model"], summary(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sensitivity_mnist"))
    parser.add_argument("--data", "--data-dir", dest="data_dir", default="data/mnist", help="MNIST IDX directory")
    parser.add_argument("--dense-epochs", type=int, default=1)
    parser.add_argument("--dense-weights", type=Path, default=Path("runs/sensitivity_mnist_dense.safetensors"))
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each pruned training")
    parser.add_argument("--uniform", type=float, default=0.9)
    parser.add_argument("--bank-size", type=int, default=64)
    parser.add_argument("--score", choices=("loss", "accuracy"), default="loss", help="score of the suggestion")
    parser.add_argument("--score-images", type=int, default=5000)
    parser.add_argument("--runs", default="uniform,suggested", help="comma-separated, among uniform,suggested")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if importlib.util.find_spec("matplotlib") is None:  # before any training: the figures are the point
        parser.error("this script draws figures: it needs matplotlib (pip install -e '.[plots]')")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    model, dense = dense_model(args)
    data = load_mnist(args.data_dir).head(args.limit)
    images = to_tensor(data.train_images[-args.score_images :])
    labels = torch.from_numpy(data.train_labels[-args.score_images :].astype("int64"))

    @torch.no_grad()
    def minus_loss(m: torch.nn.Module) -> float:
        m.eval()
        return -float(
            sum(
                F.cross_entropy(m(images[i : i + 1000]), labels[i : i + 1000], reduction="sum")
                for i in range(0, len(labels), 1000)
            )
        ) / len(labels)

    tables = {}
    for score, evaluate_fn in (("loss", minus_loss), ("accuracy", lambda m: evaluate(m, images, labels))):
        tables[score] = sweep(
            model, evaluate_fn, levels=LEVELS, balance="fix", bank_size=args.bank_size, progress=False
        )
        stem = "sensitivity" if score == args.score else f"sensitivity_{score}"
        tables[score].save_json(args.out / f"{stem}.json")
        tables[score].save_csv(args.out / f"{stem}.csv")
    table = tables[args.score]
    plot_curves(
        tables["accuracy"],
        args.out / "sensitivity.png",
        title=f"MNIST CNN: accuracy on {len(labels)} training images, one weight pruned one-shot "
        f"(bank {args.bank_size})",
    )
    uniform = {name: args.uniform for name in table.names}
    target = overall_sparsity(table, uniform)
    suggested = suggest_prune_dict(table, target)
    log(
        f"uniform {args.uniform} reaches {target:.4f} overall; suggested {suggested} "
        f"({overall_sparsity(table, suggested):.4f} overall); predicted drop ({args.score}) uniform "
        f"{predicted_drop(table, uniform):.4f}, suggested {predicted_drop(table, suggested):.4f}"
    )
    plot_targets(
        table,
        {"suggested": suggested, f"uniform {args.uniform}": uniform},
        args.out / "targets.png",
        title=f"Per-weight sparsity at the same overall sparsity (bank {args.bank_size})",
    )

    path = args.out / "comparison.json"
    report = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    report.update(
        {
            "settings": {
                **vars(args),
                "out": str(args.out),
                "dense_weights": str(args.dense_weights),
                "levels": list(LEVELS),
            },
            "target_overall_sparsity": target,
            "suggested": suggested,
            "predicted_drop": {
                "uniform": predicted_drop(table, uniform),
                "suggested": predicted_drop(table, suggested),
            },
        }
    )
    if dense is not None:
        report["dense"] = dense
    write_text(path, json.dumps(report, indent=1) + "\n")
    common = dict(
        data_dir=args.data_dir,
        balance="fix",
        bank_size=args.bank_size,
        epochs=args.epochs,
        limit=args.limit,
        seed=args.seed,
    )
    dicts = {"uniform": uniform, "suggested": suggested}
    for label in [r for r in args.runs.split(",") if r]:
        run = summary(train(label, prune_dict=dicts[label], **common))
        report["runs"][label] = {**run, "prune_dict": dicts[label]}
        write_text(path, json.dumps(report, indent=1) + "\n")
    for label, run in report["runs"].items():
        log(f"{label}: test accuracy {run['test_accuracy']:.4f} at total sparsity {run['total_sparsity']:.4f}")
    log(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
