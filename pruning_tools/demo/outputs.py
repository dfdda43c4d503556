"""The demo's files: weights, pruner state, results.json and the figures of one training run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .run_files import staged_run, write_manifest

NOT_IN_JSON = ("weights", "pruner_state", "model")
PLOTS_HINT = "no plots: matplotlib is not installed (pip install 'bank-pruning-tools[plots]')"
OUTPUT_NAMES = (  # every file write_outputs may write
    "weights.safetensors",
    "pruner_state.safetensors",
    "results.json",
    "sparsity_schedule.png",
    "layer_sparsity.png",
    "bank_histogram.png",
    "shrunk.safetensors",
)


def write_outputs(
    result: dict, out: str | Path, committed: list[Path] | None = None
) -> tuple[dict[str, Path], list[str]]:
    """Write a ``train_mnist`` result into ``out``: ``weights.safetensors`` (every parameter and
    buffer, checksummed), ``pruner_state.safetensors`` (``Prune.save``'s format: no pickle),
    ``results.json`` (everything else, and the SHA-256 of every other file) and the PNG figures when
    matplotlib is installed. The files are written apart and moved into ``out`` together, the manifest
    last (``demo.run_files``): an interrupted write leaves the earlier run whole; ``committed``
    receives each file as it lands in ``out``.

    Returns ``(files written by kind, notes for the user)``.
    """
    out = Path(out)
    with staged_run(out, [] if committed is None else committed) as staging:
        files, notes = _write(result, staging)
    return {kind: out / path.name for kind, path in files.items()}, notes


def _write(result: dict, out: Path) -> tuple[dict[str, Path], list[str]]:
    from ..integrity import save_file
    from ..pruner import write_state_file

    files = {"weights": out / "weights.safetensors", "results": out / "results.json"}
    notes = []
    save_file({name: np.array(w, order="C") for name, w in result["weights"].items()}, files["weights"])
    if result.get("pruner_state") is not None:
        files["pruner_state"] = out / "pruner_state.safetensors"
        state = dict(result["pruner_state"])
        state["masks"] = {name: np.asarray(packed) for name, packed in state["masks"].items()}
        write_state_file(state, files["pruner_state"])
    if result.get("shrunk") is not None:  # structure="channel": the model with its channels removed
        from ..structured.files import save_shrunk

        files["shrunk"] = out / "shrunk.safetensors"
        save_shrunk(result["model"], files["shrunk"])
    if importlib.util.find_spec("matplotlib") is None:  # the optional extra "plots"
        notes.append(PLOTS_HINT)
    else:
        from . import plots

        bank_size = result["settings"]["bank_size"]
        pruned = {name: w for name, w in result["weights"].items() if name in result["layer_sparsity"]}
        if result["steps"]:
            files["schedule_plot"] = plots.plot_sparsity_curve(result["steps"], out / "sparsity_schedule.png")
        files["layer_plot"] = plots.plot_layer_sparsity(result["layer_sparsity"], out / "layer_sparsity.png")
        files["bank_plot"] = plots.plot_bank_histogram(
            pruned or result["weights"], bank_size, out / "bank_histogram.png"
        )
    summary = {k: v for k, v in result.items() if k not in NOT_IN_JSON}
    summary["files"] = {k: p.name for k, p in files.items()}
    write_manifest(out, summary)
    return files, notes
