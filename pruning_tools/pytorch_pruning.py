"""PyTorch adapter: finds the parameters and applies their masks (state in ``pruner_base``).

>>> import torch
>>> from pruning_tools import pytorch_pruning
>>> model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
>>> prune = pytorch_pruning.Prune(model, 0, 0, 1, {"*.weight": 0.75})
>>> prune.prune()  # one-shot at the first step (sparse_step=0)
>>> layers, total = prune.sparsity()
>>> layers["0.weight"], round(total, 4)
(0.75, 0.75)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed as D
from . import masks as M
from .config import PruneConfig, make_config
from .pruner import STATE_FORMAT, Pruner  # noqa: F401  (STATE_FORMAT re-exported)


def _out_dims(model: nn.Module) -> dict[str, int]:
    """Parameter name -> dim of output channels (1 for ConvTranspose weights)."""
    out = {}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            out[f"{prefix}.weight" if prefix else "weight"] = 1
    return out


class TorchBridge:
    """The pruner's view of a ``torch.nn.Module``: parameters by dotted name (as
    ``named_parameters()`` reports them), their shapes and output dims, read and written in place.
    Also used by ``sensitivity`` and the parity tests."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model={type(model).__name__} is not allowed: expected a torch.nn.Module")
        self.model = model
        self._params: dict[str, nn.Parameter] = dict(model.named_parameters())
        self._out_dims = _out_dims(model)

    def names(self) -> list[str]:
        return list(self._params)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape, in model order."""
        return {name: tuple(p.shape) for name, p in self._params.items()}

    def out_dims(self) -> dict[str, int]:
        """Parameters whose output channels are not on dim 0 (ConvTranspose weights: 1)."""
        return dict(self._out_dims)

    def is_floating(self, name: str) -> bool:
        return self._params[name].is_floating_point()

    def prunable(self) -> list[str]:
        """Floating-point parameters with >= 2 dims (the default of a sensitivity sweep)."""
        return [n for n, p in self._params.items() if p.dim() >= 2 and p.is_floating_point()]

    def read(self, name: str) -> Tensor:
        """The parameter itself (no copy)."""
        return self._params[name]

    @torch.no_grad()
    def write(self, name: str, value: Tensor) -> None:
        """Overwrite the parameter (bit-exact copy of ``value``)."""
        self._params[name].copy_(value)

    @torch.no_grad()
    def apply_mask(self, name: str, mask: Tensor) -> None:
        """Zero the pruned weights in place (of the local shard of a DTensor): exactly ``+0.0``."""
        M.apply_mask_(D.local(self._params[name]), mask)

    def grad(self, name: str) -> Tensor | None:
        """The parameter's ``.grad`` (its local shard for a DTensor), or None."""
        grad = self._params[name].grad
        return None if grad is None else D.local(grad)


class Prune(Pruner):
    """Gradual pruning of a PyTorch model, unstructured or bank-balanced, by magnitude or movement.

    Call ``prune()`` after every ``optimizer.step()``. Arguments (see ``docs/pytorch_parameters.md``):

    - ``model``: the ``nn.Module`` to prune (a DDP wrapper works too; names as it reports them;
      under FSDP2 ``fully_shard`` each rank holds the masks of its shards: ``pruning_tools.distributed``).
    - ``pretrain_step``: dense steps before pruning starts.
    - ``sparse_step``: steps over which the target climbs from the initial to the final sparsity
      (0: one-shot at ``pretrain_step + 1``).
    - ``frequency``: masks are refreshed every ``frequency`` steps of the ramp, and at its end.
    - ``prune_dict``: ``{name or glob: sparsity}`` or ``{name or glob: {"sparsity": s, "balance":
      ..., "bank_size": ..., "layout": ...}}``; sparsities in [0, 1).
    - ``restore_sparsity``: start from the zeros already in the weights (fine-tuning a sparse model).
    - ``fix_sparsity``: keep the existing zeros as the masks forever (implies ``restore_sparsity``).
    - ``balance``: ``"fix"`` (bank-balanced), ``"none"`` (per tensor) or ``"global"`` (one
      threshold across all listed parameters).
    - ``prune_device``: ``"default"`` (masks beside each parameter) or ``"cpu"``.
    - ``bank_size``, ``layout``: bank geometry (keyword only).
    - ``criterion``: what a refresh ranks the live weights by (keyword only): ``"magnitude"`` (``|w|``)
      or ``"movement"`` (``-sum w * grad`` since the last refresh; ``pruning_tools.criteria``), which
      needs ``prune()`` called while the gradients are still there (after ``optimizer.step()``,
      before ``zero_grad()``).
    """

    def __init__(
        self,
        model: nn.Module,
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
        criterion: str = "magnitude",
    ) -> None:
        bridge = TorchBridge(model)
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
            shapes=bridge.shapes(),
            out_dims=bridge.out_dims(),
            criterion=criterion,
        )
        for name in self.config.params:
            if not bridge.is_floating(name):
                raise TypeError(
                    f"prune_dict entry {name!r} has dtype {bridge.read(name).dtype}: "
                    "expected a floating-point parameter"
                )
            if self.config.criterion == "movement" and not bridge.read(name).requires_grad:
                raise ValueError(
                    f"criterion='movement' is not allowed for {name!r}: it does not require grad, so it has "
                    "no gradient to score it by (use criterion='magnitude', or leave it out of prune_dict)"
                )
        self._strategy = D.strategy_for({name: bridge.read(name) for name in self.config.params}, self.config.params)
        self._bridge = bridge
        self.model = model
        self._init_state()

    def prepare(self) -> Prune:
        """No-op kept for API parity with the MXNet class (whose parameters initialise lazily)."""
        return self
