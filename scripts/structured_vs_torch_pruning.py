"""The MNIST CNN with whole channels removed: this library against Torch-Pruning, same recipe.

    python scripts/structured_vs_torch_pruning.py      # 50 % and 75 %, results in docs/results/

For each fraction, two runs of the demo's recipe from the same seed (same initial weights, batches,
shifts, Adam with the one-cycle learning rate; 8 epochs: dense for 2, the cubic ramp over 3,
fine-tuning for 3), every conv's output channels removed at the fraction, the logits kept:

- ours: ``train_mnist(structure="channel")`` (channels masked on the schedule), then ``shrink``;
- Torch-Pruning: its ``MagnitudePruner`` (L2 group importance, its default) stepped at the same steps
  to the same cubic targets (``iterative_pruning_ratio_scheduler``), each step removing channels for
  real. Adam's moments are sliced with the weights, so neither side loses optimizer state.

Each result has the test accuracy after the same fine-tuning, parameters and MACs before and after,
the channels kept, the CPU seconds spent in the pruning calls and the run's wall time.
Torch-Pruning is a benchmark dependency only (``requirements-dev.txt``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402
from torch import nn  # noqa: E402

from pruning_tools import shrink  # noqa: E402
from pruning_tools.benchmarks.harness import machine  # noqa: E402
from pruning_tools.benchmarks.inference import macs_of  # noqa: E402
from pruning_tools.demo.data import load_mnist  # noqa: E402
from pruning_tools.demo.recipe import make_settings, pruning_steps, steps_per_epoch  # noqa: E402
from pruning_tools.demo.torch_backend import TorchBackend, evaluate, to_tensor  # noqa: E402
from pruning_tools.demo.trainer import train_mnist  # noqa: E402
from pruning_tools.schedule import is_refresh_step, target_sparsity  # noqa: E402

CONVS = ("conv1", "conv2", "conv3")


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of the convolutions and linear layers for one eval-mode forward of ``x``."""
    model.eval()
    return sum(macs_of(model, lambda: model(x)).values())


def channels(model: nn.Module) -> dict[str, int]:
    return {f"{name}.weight": getattr(model, name).out_channels for name in CONVS}


def carry_optimizer_state(optimizer: torch.optim.Optimizer, before: dict[str, nn.Parameter], model: nn.Module,
                          removed: dict[str, dict[int, list[int]]]) -> None:  # fmt: skip
    """Point ``optimizer`` at ``model``'s new parameters, its state sliced the way each weight was.

    ``before``: the parameters by name before pruning; ``removed``: per parameter name, per dim, the
    indices Torch-Pruning removed. Checks that slicing the old weight gives the new one exactly.
    """
    after = dict(model.named_parameters())
    swap = {id(before[name]): after[name] for name in before}
    for group in optimizer.param_groups:
        group["params"] = [swap[id(p)] for p in group["params"]]
    for name, old in before.items():
        new, state = after[name], optimizer.state.pop(old, None)
        keep = {d: sorted(set(range(old.shape[d])) - set(idx)) for d, idx in removed.get(name, {}).items()}
        sliced = old.detach()
        for d, kept in keep.items():
            sliced = sliced.index_select(d, torch.tensor(kept))
        if sliced.shape != new.shape or not torch.equal(sliced, new.detach()):
            raise RuntimeError(f"{name}: the recorded removal does not give Torch-Pruning's weight")
        if state is None:
            continue
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == old.shape:
                for d, kept in keep.items():
                    value = value.index_select(d, torch.tensor(kept))
                state[key] = value
        optimizer.state[new] = state


def torch_pruning_step(pruner: Any, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """One ``pruner.step`` on ``model``, group by group, Adam's state carried (``carry_optimizer_state``)."""
    before = dict(model.named_parameters())
    names = {module: name for name, module in model.named_modules()}
    shapes = {name: p.shape for name, p in before.items()}
    removed: dict[str, dict[int, list[int]]] = {}
    for group in pruner.step(interactive=True):
        inside = {name: p for name, p in model.named_parameters()}
        group.prune()
        for name, p in model.named_parameters():
            old = inside[name]
            if p is old:
                continue
            (dim,) = [d for d in range(p.dim()) if p.shape[d] != old.shape[d]]
            idxs = _indices_of(group, names, name, old.shape[dim] - p.shape[dim])
            already = removed.setdefault(name, {}).setdefault(dim, [])
            original = sorted(set(range(shapes[name][dim])) - set(already))
            already.extend(original[i] for i in idxs)  # indices of this group -> of the weight before the step
    carry_optimizer_state(optimizer, before, model, removed)


def _indices_of(group: Any, names: dict[nn.Module, str], name: str, n_removed: int) -> list[int]:
    """The indices the group removed along the changed dim of the parameter ``name`` (``names``: module -> name)."""
    module_name = name.rsplit(".", 1)[0]
    for dep, idxs in group.items:
        if names.get(dep.target.module) == module_name:
            plain = sorted({int(i) for i in idxs})
            if len(plain) == n_removed:
                return plain
    raise RuntimeError(f"{name}: no item of the group removed {n_removed} indices")


def run_torch_pruning(data_dir: str | None, fraction: float, epochs: int | None, limit: int | None, seed: int) -> dict:
    """The demo's recipe with Torch-Pruning removing the channels, on one thread as the demo's."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_torch_pruning(data_dir, fraction, epochs, limit, seed)
    finally:
        torch.set_num_threads(previous)


def _run_torch_pruning(data_dir: str | None, fraction: float, epochs: int | None, limit: int | None, seed: int) -> dict:
    started = time.perf_counter()
    settings = make_settings(data_dir, sparsity=fraction, balance="fix", bank_size=64, prune_dict=None,
                             epochs=epochs, batch_size=None, seed=seed, limit=limit)  # fmt: skip
    data = load_mnist(data_dir).head(limit)
    per_epoch = steps_per_epoch(len(data.train_images), settings["batch_size"])
    total = per_epoch * settings["epochs"]
    backend = TorchBackend(data, settings, total)
    pretrain, ramp, frequency = pruning_steps(total, per_epoch)
    events = [t for t in range(1, total + 1) if is_refresh_step(t, pretrain, ramp, frequency)]
    targets = [target_sparsity(t, pretrain, ramp, 0.0, fraction) for t in events]
    model, example = backend.model, backend.example_inputs()[0]
    params_before, macs_before = count(model), macs(model, example[:1])
    model.eval()  # Torch-Pruning traces one forward: leave the BatchNorm statistics alone
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=fraction,
        iterative_steps=len(events), iterative_pruning_ratio_scheduler=lambda _r, _n: [0.0, *targets],
        ignored_layers=[model.fc],
    )  # fmt: skip
    pruning_cpu, history, step = 0.0, [], 0
    for epoch in range(1, settings["epochs"] + 1):
        for index in backend.batches():
            step += 1
            backend.train_step(index, step, None)
            if step in events:
                cpu = time.process_time()
                torch_pruning_step(pruner, model, backend.optimizer)
                pruning_cpu += time.process_time() - cpu
        history.append({"epoch": epoch, "test_accuracy": backend.evaluate(), "channels": channels(model)})
    return {
        "library": f"torch_pruning {tp.__version__}",
        "fraction": fraction,
        "settings": settings | {"pretrain_step": pretrain, "sparse_step": ramp, "frequency": frequency},
        "test_accuracy": history[-1]["test_accuracy"],
        "params": [params_before, count(model)],
        "macs": [macs_before, macs(model, example[:1])],
        "channels": channels(model),
        "pruning_cpu_seconds": pruning_cpu,
        "epochs": history,
        "wall_seconds": time.perf_counter() - started,
    }


def run_ours(data_dir: str | None, fraction: float, epochs: int | None, limit: int | None, seed: int) -> dict:
    """The demo's recipe with ``structure="channel"``, then ``shrink``."""
    started = time.perf_counter()
    result = train_mnist(data_dir, sparsity=fraction, structure="channel", epochs=epochs, limit=limit, seed=seed)
    model = result["model"]
    data = load_mnist(data_dir).head(limit)
    x = to_tensor(data.test_images).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(data.test_labels.astype("int64"))
    params_before, macs_before = count(model), macs(model, x[:1])
    cpu = time.process_time()
    shrink(model, result["pruner_state"])
    shrink_cpu = time.process_time() - cpu
    return {
        "library": "pruning_tools",
        "fraction": fraction,
        "settings": result["settings"],
        "test_accuracy": evaluate(model, x, y),
        "masked_test_accuracy": result["test_accuracy"],
        "params": [params_before, count(model)],
        "macs": [macs_before, macs(model, x[:1])],
        "channels": channels(model),
        "shrink_cpu_seconds": shrink_cpu,
        "epochs": [{k: e[k] for k in ("epoch", "test_accuracy")} for e in result["epochs"]],
        "wall_seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "mnist"))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.75])
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo's 8")
    parser.add_argument("--limit", type=int, default=None, help="the first N train and test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "structured_mnist_vs_torch_pruning.json"))
    args = parser.parse_args(argv)
    results = []
    for fraction in args.fractions:
        for run in (run_ours, run_torch_pruning):
            results.append(run(args.data_dir, fraction, args.epochs, args.limit, args.seed))
            r = results[-1]
            print(f"{r['library']:>22} {fraction:.0%}: accuracy {r['test_accuracy']:.4f}, params "
                  f"{r['params'][0]:,} -> {r['params'][1]:,}, channels {r['channels']}", flush=True)  # fmt: skip
    out = {"command": "python scripts/structured_vs_torch_pruning.py " + " ".join(argv or sys.argv[1:]),
           "cpu": machine(), "torch": torch.__version__, "runs": results}  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
