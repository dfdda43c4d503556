"""ONNX export of a pruned model: every weight, zeros included, kept as an initializer.

Needs the optional extra ``onnx`` (``onnx``; ``onnxruntime`` to run the file).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def export_onnx(model: torch.nn.Module, example: Tensor | tuple, path: str | Path, **kwargs: Any) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``): it needs only the
    ``onnx`` package and keeps every weight, zeros included, as an initializer. ``kwargs`` go to
    ``torch.onnx.export`` (``input_names``, ``dynamic_axes``, ...)."""
    args = example if isinstance(example, tuple) else (example,)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript path is legacy
        torch.onnx.export(model, args, str(path), dynamo=False, **kwargs)


def onnx_initializers(path: str | Path) -> dict[str, Any]:
    """``{name: numpy array}`` of every initializer of an ONNX file (needs ``onnx``)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as error:
        raise ImportError("reading ONNX files needs onnx: pip install 'bank-pruning-tools[onnx]'") from error

    model = onnx.load(str(path))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


__all__ = ["export_onnx", "onnx_initializers"]
