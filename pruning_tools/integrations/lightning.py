"""Gradual pruning inside a Lightning ``Trainer`` (extra ``lightning``).

``PruneCallback(pretrain_step, sparse_step, frequency, prune_dict, **prune_options)`` takes
``Prune``'s arguments and:

- builds ``Prune`` on the ``LightningModule`` when fitting starts (names as
  ``pl_module.named_parameters()`` reports them; after ``configure_model``, so lazily built layers exist);
- calls ``prune()`` once per real optimizer step: after a batch that advanced ``trainer.global_step``,
  so with ``accumulate_grad_batches=n`` the schedule counts optimizer steps, not batches;
- logs ``sparsity`` (overall) and ``sparsity/<name>`` with ``pl_module.log`` every
  ``log_every_n_steps`` optimizer steps;
- carries the pruner state in Lightning checkpoints (the callback's ``state_dict`` /
  ``load_state_dict``: plain data and uint8 tensors, loadable with ``weights_only=True``), so
  ``trainer.fit(..., ckpt_path=...)`` resumes with the same masks, bit for bit, and the same step.

Works with ``lightning.pytorch`` and with ``pytorch_lightning`` (it is a callback of whichever is
installed, of both when both are), and under DDP: every process prunes the same weights the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_bases: list[type] = []
try:
    from lightning.pytorch import Callback as _LightningCallback

    _bases.append(_LightningCallback)
except ImportError:
    pass
try:
    from pytorch_lightning import Callback as _PLCallback

    _bases.append(_PLCallback)
except ImportError:
    pass
if not _bases:  # pragma: no cover - exercised with a monkeypatched import
    raise ImportError(
        'pruning_tools.integrations.lightning needs Lightning: pip install "bank-pruning-tools[lightning]"'
    )

from ..pytorch_pruning import Prune  # noqa: E402
from . import prune_arguments, sparsity_logs  # noqa: E402


class PruneCallback(*_bases):  # type: ignore[misc]  # bases known at import time only: mypy cannot follow them
    """A Lightning callback that prunes the ``LightningModule`` on ``Prune``'s schedule.

    ``pretrain_step``, ``sparse_step`` and ``frequency`` count optimizer steps
    (``trainer.global_step``); ``prune_dict`` and ``**prune_options`` are ``Prune``'s.
    ``self.prune`` is the pruner once fitting has started.
    """

    def __init__(self, pretrain_step: int, sparse_step: int, frequency: int, prune_dict: Any, **prune_options: Any):
        super().__init__()
        self.arguments = prune_arguments(pretrain_step, sparse_step, frequency, prune_dict, prune_options)
        self.prune: Prune | None = None
        self._restored: Mapping[str, Any] | None = None  # a checkpoint's state, loaded when the pruner exists

    # ------------------------------------------------------------ Lightning hooks

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.prune is None or self.prune.model is not pl_module:
            self.prune = Prune(pl_module, **self.arguments)
        if self._restored is not None:
            self.prune.load_state_dict(self._restored)
            self._restored = None

    def on_train_start(self, trainer, pl_module) -> None:  # the trainer's step is restored by now
        prune = self._pruner()
        if prune.step != trainer.global_step:
            raise RuntimeError(
                f"PruneCallback: the pruner is at step {prune.step} but the trainer at global step "
                f"{trainer.global_step}: resume from a checkpoint written with this callback (ckpt_path=...)"
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        prune = self._pruner()
        stepped = prune.step < trainer.global_step
        while prune.step < trainer.global_step:  # one prune() per optimizer step taken
            prune.prune()
        if stepped and trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            pl_module.log_dict(sparsity_logs(prune), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        if self.prune is None:
            return dict(self._restored or {})
        return self.prune.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if not state_dict:
            return
        if self.prune is None:
            self._restored = state_dict
        else:
            self.prune.load_state_dict(state_dict)

    def _pruner(self) -> Prune:
        if self.prune is None:
            raise RuntimeError("PruneCallback: fitting has not started (the pruner is built in on_fit_start)")
        return self.prune


__all__ = ["PruneCallback"]
