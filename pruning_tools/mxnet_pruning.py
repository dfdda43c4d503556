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
        'pruning_tools.mxnet_pruning needs MXNet (mxnet 1.9.1, numpy < 1.24): pip install "bank-pruning-tools[mxnet]"'
    ) from error
torch.set_num_threads(_torch_threads)  # importing mxnet resets the OpenMP thread count torch uses

from . import distributed as D  # noqa: E402
from . import geometry as G  # noqa: E402
from .config import PruneConfig, make_config  # noqa: E402
from .pruner import Pruner  # noqa: E402

_TRANSPOSED = (gluon.nn.Conv1DTranspose, gluon.nn.Conv2DTranspose, gluon.nn.Conv3DTranspose)
_CHANNELS_FIRST = ("NCW", "NCHW", "NCDHW")


def _conv_geometry(
    net: gluon.Block, params: Mapping[str, gluon.Parameter]
) -> tuple[dict[str, int], dict[str, str], set[str]]:
    """``(name -> dim of output channels, name -> channels-last layout, conv weight names)``.

    ConvTranspose weights have their output channels on dim 1, like PyTorch's. Channels-last conv
    layouts (weights ``[out, *kernel, in]``) are reported so that a pruner can refuse them when listed:
    their banks would run along the wrong dimension.
    """
    names = {id(p): name for name, p in params.items()}
    out_dims: dict[str, int] = {}
    channels_last: dict[str, str] = {}
    conv_weights: set[str] = set()

    def visit(block: gluon.Block) -> None:
        weight = getattr(block, "weight", None)
        name = names.get(id(weight))
        if name is None or not isinstance(block, gluon.nn.conv_layers._Conv):
            return
        conv_weights.add(name)
        layout = block._kwargs.get("layout", "NCHW")
        if layout not in _CHANNELS_FIRST:
            channels_last[name] = layout
        if isinstance(block, _TRANSPOSED):
            out_dims[name] = 1

    net.apply(visit)
    return out_dims, channels_last, conv_weights


def _initialised(p: gluon.Parameter) -> bool:
    try:
        p.list_data()
    except RuntimeError:  # also DeferredInitializationError
        return False
    return True


class MxnetBridge:
    """The pruner's view of a Gluon block: parameters by ``collect_params()`` name, read as CPU torch
    copies of the first context's values, masks written on every context. Also used by
    ``sensitivity`` and the parity tests."""

    def __init__(self, net: gluon.Block) -> None:
        if not isinstance(net, gluon.Block):
            raise TypeError(f"net={type(net).__name__} is not allowed: expected a mxnet.gluon.Block")
        self.net = net
        every = dict(net.collect_params().items())
        # auxiliary states (BatchNorm running statistics) are not parameters: PyTorch keeps them as buffers
        self._aux = [name for name, p in every.items() if not getattr(p, "_differentiable", True)]
        self._params: dict[str, gluon.Parameter] = {n: p for n, p in every.items() if n not in self._aux}
        self._out_dims, self.channels_last, self._conv_weights = _conv_geometry(net, self._params)
        self._mask_arrays: dict[str, tuple[Tensor, list[tuple[mx.nd.NDArray, mx.nd.NDArray]]]] = {}

    def names(self) -> list[str]:
        """Every parameter's name, as ``collect_params()`` lists them."""
        return list(self._params)

    def not_parameters(self) -> dict[str, str]:
        """Auxiliary states (BatchNorm running statistics), like PyTorch's buffers: never pruned, and a
        prune_dict naming one is refused."""
        return {name: "an auxiliary state (e.g. a BatchNorm running statistic)" for name in self._aux}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape (0 where deferred initialisation has not inferred it yet)."""
        return {name: tuple(p.shape) for name, p in self._params.items()}

    def out_dims(self) -> dict[str, int]:
        return dict(self._out_dims)

    def layouts(self, layout: str = "channels_last") -> dict[str, str]:
        """Parameters read with another layout than ``layout`` by default: those with more than 2 dims
        that no convolution owns are rows along their last dim (``geometry.param_layout``)."""
        out = {n: G.param_layout(p.shape, n in self._conv_weights, layout) for n, p in self._params.items()}
        return {name: chosen for name, chosen in out.items() if chosen != layout}

    def aliases(self) -> dict[str, str]:
        """Other spellings of parameter names (none in Gluon: ``collect_params()`` names are unique)."""
        return {}

    def is_floating(self, name: str) -> bool:
        """Whether parameter ``name`` holds floating-point values (only those can be pruned)."""
        return np.dtype(self._params[name].dtype).kind == "f"

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self._params[name].dtype)

    def dtypes(self) -> dict[str, str]:
        """Every parameter's dtype name (``"float32"``...), as ``pytorch_pruning.TorchBridge`` names them."""
        return {name: self.dtype(name).name for name in self._params}

    def prunable(self) -> list[str]:
        """Floating-point parameters with >= 2 dims (the default of a sensitivity sweep)."""
        return [n for n, p in self._params.items() if len(p.shape) >= 2 and self.is_floating(n)]

    def uninitialised(self, names: list[str]) -> list[str]:
        return [name for name in names if not _initialised(self._params[name])]

    def read(self, name: str) -> Tensor:
        """A CPU torch copy of the first context's value."""
        return torch.from_numpy(self._params[name].list_data()[0].asnumpy())

    def write(self, name: str, value: Tensor) -> None:
        """Overwrite the parameter on every context with ``value`` (bit-exact)."""
        p = self._params[name]
        for data in p.list_data():
            data[:] = mx.nd.array(value.numpy(), ctx=data.context, dtype=p.dtype)

    def apply_mask(self, name: str, mask: Tensor) -> None:
        """Zero the pruned weights on every context: exactly ``+0.0`` (a NaN there cleared too), as
        ``masks.apply_mask_`` does for PyTorch."""
        for data, (keep, zeros) in zip(self._params[name].list_data(), self._mask_ndarrays(name, mask)):
            mx.nd.where(keep, data, zeros, out=data)

    def grad(self, name: str) -> Tensor | None:
        """None: the MXNet pruner ranks by magnitude only (``criterion="movement"`` is refused)."""
        return None

    def _mask_ndarrays(self, name: str, mask: Tensor) -> list[tuple[mx.nd.NDArray, mx.nd.NDArray]]:
        """``(mask, zeros)`` as NDArrays per context (dtype of the parameter), rebuilt when the mask,
        the contexts or the dtype change."""
        p = self._params[name]
        contexts = p.list_ctx()
        cached = self._mask_arrays.get(name)
        if (
            cached is None
            or cached[0] is not mask
            or [a.context for a, _ in cached[1]] != contexts
            or cached[1][0][0].dtype != np.dtype(p.dtype)
        ):
            keep = mask.numpy()
            arrays = [
                (mx.nd.array(keep, ctx=ctx, dtype=p.dtype), mx.nd.zeros(keep.shape, ctx=ctx, dtype=p.dtype))
                for ctx in contexts
            ]
            self._mask_arrays[name] = cached = (mask, arrays)
        return cached[1]


class Prune(Pruner):
    """Gradual magnitude pruning of a Gluon block, unstructured or bank-balanced.

    The arguments of ``pytorch_pruning.Prune``, in the same order, with the same defaults and the same
    validation; what differs is below. Call ``prepare()`` once the parameters exist (it is cheap and
    idempotent, so calling it every iteration after ``backward()`` is fine; the constructor calls it
    when the parameters are already initialised), then ``prune()`` after every ``trainer.step()``.
    Masks are computed on the CPU from the first context's copy and applied on every context.

    Args:
        net: The ``gluon.Block`` to prune (hybridized or not); only its weights are modified.
        prune_dict: As in ``pytorch_pruning.Prune``, with names (or globs) from ``net.collect_params()``,
            e.g. ``dense0_weight``. BatchNorm running statistics are auxiliary states, not parameters:
            naming one is an error.
        prune_device: Accepted for parity; MXNet masks are always computed on the CPU.
        model: The block, by the keyword of the original tool's documentation (not both).
        criterion: Only ``"magnitude"``: movement pruning reads gradients and is refused with an error
            pointing to ``pytorch_pruning.Prune``.
    """

    _bridge: MxnetBridge  # also answers shapes, dtypes and deferred initialisation

    def __init__(
        self,
        net: gluon.Block | None = None,
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
        model: gluon.Block | None = None,
        criterion: str = "magnitude",
    ) -> None:
        if criterion == "movement":
            raise ValueError(
                "criterion='movement' is not allowed with MXNet: expected 'magnitude' (movement pruning reads "
                "gradients and is available for PyTorch only: pruning_tools.pytorch_pruning.Prune)"
            )
        if (net is None) == (model is None):
            given = "both net= and model=" if net is not None else "neither"
            raise TypeError(f"Prune() takes the Gluon block once, as net (or model=): got {given}")
        net = net if net is not None else model
        bridge = MxnetBridge(net)
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
            shapes=bridge.shapes(),  # 0: not inferred yet
            out_dims=bridge.out_dims(),
            layouts=bridge.layouts(layout) if isinstance(layout, str) else None,
            dtypes=bridge.dtypes(),
            criterion=criterion,
            not_parameters=bridge.not_parameters(),
        )
        for name in self.config.params:
            if not bridge.is_floating(name):
                raise TypeError(
                    f"prune_dict entry {name!r} has dtype {bridge.dtype(name)}: expected a floating-point parameter"
                )
            if name in bridge.channels_last:
                raise ValueError(
                    f"{name}: conv layout={bridge.channels_last[name]!r} is not supported: expected one of "
                    f"{_CHANNELS_FIRST} (weights [out, in, *kernel])"
                )
        self._bridge = bridge
        self._strategy = D.LocalMasks()  # masks of whole host copies
        self.net = net
        self._prepared = False
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
            self.config = self.config.with_shapes(self._bridge.shapes()).with_dtypes(self._bridge.dtypes())
            self._init_state()
            self._prepared = True
        return self

    def state_dict(self) -> dict:
        """Plain data (ints, floats, strings, uint8 numpy arrays of bit-packed masks)."""
        return self._plain_state()

    # ------------------------------------------------------------ adapter hooks

    def _uninitialised(self) -> list[str]:
        return self._bridge.uninitialised(list(self.config.params))

    def _check_ready(self) -> None:
        if not self._prepared:
            raise RuntimeError(
                "Prune.prepare() has not succeeded yet: call it after the network's first forward "
                f"pass (uninitialised parameters: {self._uninitialised()})"
            )
