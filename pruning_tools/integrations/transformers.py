"""Gradual pruning inside a Hugging Face ``transformers.Trainer`` (extra ``transformers``).

``PruneCallback(pretrain_step, sparse_step, frequency, prune_dict, **prune_options)`` takes
``Prune``'s arguments and:

- builds ``Prune`` on the Trainer's model (the unwrapped one: names as ``model.named_parameters()``
  reports them, no DDP or compile prefix) when training begins;
- calls ``prune()`` after every optimizer step (``on_optimizer_step``), so with
  ``gradient_accumulation_steps=n`` the schedule counts optimizer steps: the pruner's step is the
  Trainer's ``global_step``;
- adds ``sparsity`` (overall) and ``sparsity/<name>`` (per parameter) to every training log, so they
  are in ``trainer.state.log_history`` and what the callbacks after this one log (the printer and
  progress bar; ``report_to`` integrations run before user callbacks and do not see them);
- writes the pruner state (``Prune.save``, safetensors, no pickle) as ``pruner_state.safetensors``
  into every checkpoint folder, and on ``trainer.train(resume_from_checkpoint=...)`` reads it back
  from ``<output_dir>/checkpoint-<global_step>`` (or the folder given to ``resume_from``): the same
  masks, bit for bit, and the same step.

Under DDP (``torchrun`` or ``accelerate launch``) every process builds its own pruner on the same
weights and computes the same masks (ties go to the lower index); the main process writes the state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as error:  # pragma: no cover - exercised with a monkeypatched import
    raise ImportError(
        'pruning_tools.integrations.transformers needs transformers: pip install "bank-pruning-tools[transformers]"'
    ) from error

from torch import nn

from ..pytorch_pruning import Prune
from . import STATE_FILE, prune_arguments, sparsity_logs


class PruneCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` that prunes the Trainer's model on ``Prune``'s schedule.

    ``pretrain_step``, ``sparse_step`` and ``frequency`` count optimizer steps (the Trainer's
    ``global_step``); ``prune_dict`` and ``**prune_options`` (``balance``, ``bank_size``,
    ``layout``, ...) are ``Prune``'s. ``self.prune`` is the pruner once training has begun.
    """

    def __init__(self, pretrain_step: int, sparse_step: int, frequency: int, prune_dict: Any, **prune_options: Any):
        self.arguments = prune_arguments(pretrain_step, sparse_step, frequency, prune_dict, prune_options)
        self.prune: Prune | None = None
        self._resume_dir: Path | None = None

    def resume_from(self, checkpoint_dir: str | os.PathLike) -> PruneCallback:
        """Read the pruner state from ``checkpoint_dir`` on the next resumed ``train()`` (needed only
        when that checkpoint is not ``<output_dir>/checkpoint-<step>``)."""
        self._resume_dir = Path(checkpoint_dir)
        return self

    # ------------------------------------------------------------ Trainer events

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise RuntimeError("PruneCallback: the Trainer passed no model to on_train_begin")
        if state.global_step == 0:
            self.prune = Prune(model, **self.arguments)
            return
        folder = self._resume_dir or _checkpoint_folder(args, state)
        path = folder / STATE_FILE
        if not path.is_file():
            if self.prune is not None and self.prune.model is model and self.prune.step == state.global_step:
                return  # train() again in the same process: carry on
            raise RuntimeError(
                f"PruneCallback: resuming at step {state.global_step} but {path} does not exist; the callback "
                f"writes {STATE_FILE} into every checkpoint folder: resume from such a folder, and when it is not "
                "<output_dir>/checkpoint-<step>, call callback.resume_from(folder) before trainer.train(...)"
            )
        prune = Prune(model, **self.arguments)
        prune.load(path)
        if prune.step != state.global_step:
            raise RuntimeError(
                f"PruneCallback: {path} holds the pruner at step {prune.step}, the Trainer resumes at step "
                f"{state.global_step}: they must be from the same checkpoint"
            )
        self.prune = prune
        self._resume_dir = None

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._pruner().prune()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.prune is None or logs is None or any(key.startswith("eval_") for key in logs):
            return
        values = sparsity_logs(self.prune)
        logs.update(values)
        history = state.log_history
        if history and history[-1].get("step") == state.global_step and set(history[-1]) >= set(logs) - set(values):
            history[-1].update(values)  # the entry the Trainer made of these logs

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if not args.should_save:
            return
        folder = _checkpoint_folder(args, state)
        if not folder.is_dir():
            raise RuntimeError(
                f"PruneCallback: the Trainer saved a checkpoint but {folder} does not exist (hyperparameter-search "
                "runs, which write into run-<trial> folders, are not supported)"
            )
        self._pruner().save(folder / STATE_FILE)

    def _pruner(self) -> Prune:
        if self.prune is None:
            raise RuntimeError("PruneCallback: training has not begun (the pruner is built in on_train_begin)")
        return self.prune


def _checkpoint_folder(args: TrainingArguments, state: TrainerState) -> Path:
    """``<output_dir>/checkpoint-<global_step>``: where the Trainer writes the checkpoint of this step."""
    if args.output_dir is None:  # the Trainer fills in a default; None here means it was cleared afterwards
        raise RuntimeError("PruneCallback: TrainingArguments.output_dir is None: checkpoints need a folder")
    return Path(args.output_dir) / f"checkpoint-{state.global_step}"


__all__ = ["STATE_FILE", "PruneCallback"]
