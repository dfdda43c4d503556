"""Helpers of the command-line tests: one way to run a command, one check of an error, small tensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner, Result

from pruning_tools import bank_mask
from pruning_tools.cli import main


def invoke(*args) -> Result:
    """``pruning-tools ARGS`` in-process (stdout and stderr together in ``.output``)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result: Result, expected: str, exit_codes=(1, 2)) -> str:
    """The command failed with a non-zero exit code and one ``Error:`` line holding ``expected``; no
    traceback, no exception other than the exit. Returns that line."""
    assert result.exit_code in exit_codes, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expected in errors[0], result.output
    return errors[0]


def balanced_weight(rows: int = 8, cols: int = 128, seed: int = 0) -> torch.Tensor:
    """``[rows, cols]`` with 4 of every 64 weights kept (bank-balanced at 93.75 %)."""
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    return w * bank_mask(w, None, 0.9375)


def tampered_state(source: Path, target: Path, change, resign: bool = True) -> Path:
    """A copy of the pruner state file ``source`` whose JSON state went through ``change(state)``,
    its checksums recomputed (``resign``) or left as they were."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from pruning_tools.integrity import signed_metadata

    with safe_open(str(source), "numpy") as f:
        metadata, tensors = f.metadata(), {key: f.get_tensor(key) for key in f.keys()}
    state = json.loads(metadata["state"])
    changed = change(state)
    metadata["state"] = changed if isinstance(changed, str) else json.dumps(state)
    if resign:  # an edit that recomputed the checksums: what the state says must be checked itself
        metadata = signed_metadata(tensors, metadata)
    save_file(tensors, str(target), metadata=metadata)
    return target
