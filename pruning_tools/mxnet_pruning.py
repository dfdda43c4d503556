"""MXNet (Gluon) adapter: the same pruner as ``pytorch_pruning``, for Gluon blocks.

Finds the parameters (names from ``net.collect_params()``), hands their values to the shared
state in ``pruner_base`` as torch tensors and writes the masks back on every context. Masks are
computed by ``masks.py`` on torch copies of the weights, so identical weights give bit-identical
masks in both frameworks.

>>> import mxnet as mx
>>> from pruning_tools import mxnet_pruning
>>> net = mx.gluon.nn.Dense(64, in_units=128, prefix="fc_")  # parameters fc_weight, fc_bias
>>> net.initialize()
>>> prune = mxnet_pruning.Prune(net, 0, 0, 1, {"*weight": 0.75})
>>> prune.prepare().prune()  # one-shot at the first step (sparse_step=0)
>>> layers, total = prune.sparsity()
>>> layers["fc_weight"], round(total, 4)
(0.75, 0.75)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

_torch_threads = torch.get_num_threads()
try:
    import mxnet as mx
    from mxnet import gluon
except ImportError as error:  # pragma: no cover - exercised with a monkeypatched import
    raise ImportError(
        'pruning_tools.mxnet_pruning needs MXNet (mxnet 1.9.1, numpy < 1.24): pip install "pruning-tools[mxnet]"'
    ) from error
torch.set_num_threads(_torch_threads)  # importing mxnet resets the OpenMP thread count torch uses

from .config import PruneConfig, make_config
from .pruner_base import PrunerBase, read_state_file, write_state_file

_TRANSPOSED = (gluon.nn.Conv1DTranspose, gluon.nn.Conv2DTranspose, gluon.nn.Conv3DTranspose)
_CHANNELS_FIRST = ("NCW", "NCHW", "NCDHW")


def _conv_geometry(net: gluon.Block, params: Mapping[str, gluon.Parameter]) -> dict[str, int]:
    """Parameter name -> dim of output channels (1 for ConvTranspose weights, like PyTorch).

    Refuses channels-last conv layouts (weights ``[out, *kernel, in]``): their banks would run
    along the wrong dimension.
    """
    names = {id(p): name for name, p in params.items()}
    out_dims: dict[str, int] = {}

    def visit(block: gluon.Block) -> None:
        weight = getattr(block, "weight", None)
        name = names.get(id(weight))
        if name is None or not isinstance(block, gluon.nn.conv_layers._Conv):
            return
        layout = block._kwargs.get("layout", "NCHW")
        if layout not in _CHANNELS_FIRST:
            raise ValueError(
                f"{name}: conv layout={layout!r} is not supported: expected one of {_CHANNELS_FIRST} "
                "(weights [out, in, *kernel])"
            )
        if isinstance(block, _TRANSPOSED):
            out_dims[name] = 1

    net.apply(visit)
    return out_dims


def _initialised(p: gluon.Parameter) -> bool:
    try:
        p.list_data()
    except RuntimeError:  # also DeferredInitializationError
        return False
    return True


class Prune(PrunerBase):
    """Gradual magnitude pruning of a Gluon block, unstructured or bank-balanced.

    Same arguments, defaults and behaviour as ``pytorch_pruning.Prune`` (see
    ``docs/mxnet_parameters.md``); ``prune_dict`` keys are names (or globs) from
    ``net.collect_params()``. Call ``prepare()`` once the parameters exist (it is cheap and
    idempotent, so calling it every iteration after ``backward()`` is fine; the constructor calls it
    when the parameters are already initialised), then ``prune()`` after every ``trainer.step()``.
    Masks are computed on the CPU from the first context's copy and applied on every context.
    """

    def __init__(
        self,
        net: gluon.Block,
        pretrain_step: int = 0,
        sparse_step: int = 0,
        frequency: int = 100,
        prune_dict: Mapping[str, Any] | None = None,
        restore_sparsity: bool = False,
        fix_sparsity: bool = False,
        balance: str = "fix",
        prune_device: str = "default",
        *,
        bank_size: int = 64,
        layout: str = "channels_last",
    ) -> None:
        if not isinstance(net, gluon.Block):
            raise TypeError(f"net={type(net).__name__} is not allowed: expected a mxnet.gluon.Block")
        params = net.collect_params()
        self.config: PruneConfig = make_config(
            pretrain_step,
            sparse_step,
            frequency,
            prune_dict,
            restore_sparsity,
            fix_sparsity,
            balance,
            prune_device,
            bank_size,
            layout,
            shapes={name: tuple(p.shape) for name, p in params.items()},  # 0: not inferred yet
            out_dims=_conv_geometry(net, params),
        )
        self._params: dict[str, gluon.Parameter] = {name: params[name] for name in self.config.params}
        for name, p in self._params.items():
            if np.dtype(p.dtype).kind != "f":
                raise TypeError(
                    f"prune_dict entry {name!r} has dtype {np.dtype(p.dtype)}: expected a floating-point parameter"
                )
        self.net = net
        self._prepared = False
        self._mask_arrays: dict[str, tuple[Tensor, list[mx.nd.NDArray]]] = {}
        if not self._uninitialised():
            self.prepare()

    # ------------------------------------------------------------ public API

    def prepare(self) -> Prune:
        """Take the initial state once every pruned parameter is initialised; then a no-op.

        Raises ``RuntimeError`` naming the parameters still waiting for deferred initialisation.
        """
        if not self._prepared:
            missing = self._uninitialised()
            if missing:
                raise RuntimeError(
                    f"prepare(): parameters not initialised yet: {missing}; call net.initialize() and "
                    "run one forward pass first (deferred initialisation)"
                )
            self._init_state()
            self._prepared = True
        return self

    def state_dict(self) -> dict:
        """Plain data (ints, floats, strings, uint8 numpy arrays of bit-packed masks)."""
        state = super().state_dict()
        state["masks"] = {name: packed.numpy() for name, packed in state["masks"].items()}
        return state

    def save(self, path: str | Path) -> None:
        """Write ``state_dict()`` to a safetensors file (no pickle)."""
        write_state_file(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        """Resume from a file written by ``save`` (settings must match)."""
        self.load_state_dict(read_state_file(path))

    # ------------------------------------------------------------ adapter hooks

    def _uninitialised(self) -> list[str]:
        return [name for name, p in self._params.items() if not _initialised(p)]

    def _check_ready(self) -> None:
        if not self._prepared:
            raise RuntimeError(
                "Prune.prepare() has not succeeded yet: call it after the network's first forward "
                f"pass (uninitialised parameters: {self._uninitialised()})"
            )

    def _weights(self) -> dict[str, Tensor]:
        """CPU torch copies of the first context's values, ``{name: [shape of the parameter]}``."""
        return {name: torch.from_numpy(p.list_data()[0].asnumpy()) for name, p in self._params.items()}

    def _apply(self) -> None:
        for name, mask in self._masks.items():
            if mask is not None:
                for data, keep in zip(self._params[name].list_data(), self._mask_ndarrays(name, mask)):
                    data *= keep

    def _mask_ndarrays(self, name: str, mask: Tensor) -> list[mx.nd.NDArray]:
        """The mask as one NDArray per context (dtype of the parameter), rebuilt when the mask,
        the contexts or the dtype change."""
        p = self._params[name]
        contexts = p.list_ctx()
        cached = self._mask_arrays.get(name)
        if (
            cached is None
            or cached[0] is not mask
            or [a.context for a in cached[1]] != contexts
            or cached[1][0].dtype != np.dtype(p.dtype)
        ):
            keep = mask.numpy()
            arrays = [mx.nd.array(keep, ctx=ctx, dtype=p.dtype) for ctx in contexts]
            self._mask_arrays[name] = cached = (mask, arrays)
        return cached[1]
