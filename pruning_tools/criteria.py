"""Training-time pruning criteria: what a mask refresh ranks the live weights by.

- ``"magnitude"`` (the default): ``|w|``; no state.
- ``"movement"`` (Sanh, Wolf & Rush 2020): the score ``S = -sum_t w_t * g_t`` summed over every
  step from the first ``prune()`` up to the last refresh (``g_t`` the gradient of the loss at step
  ``t``, read after the optimizer step together with the updated weight ``w_t``), so weights moving
  away from zero are kept and weights moving towards zero are pruned, whatever their size. As in the
  original method the scores keep accumulating across refreshes (zeroing them at every refresh was
  measured worse: on the LM demo, bank-64 at 75 %, test perplexity 7.36 against 5.36). A pruned weight
  is ``+0.0`` and adds nothing more. One float32 score per pruned weight (4 bytes, beside the
  parameter; the shard's shape under FSDP2), not accumulated after the last refresh.

  Non-finite terms: a step whose ``w * g`` holds an inf or a NaN in any parameter (what a mixed-precision
  step that ``GradScaler`` skips leaves in the gradients), or would make a score overflow, adds nothing to
  any score, as ``GradScaler`` skips the whole optimizer step (``Pruner`` warns once; under FSDP2 every rank
  skips it when one does). The scores therefore stay finite, and every state saved can be loaded.

The pruner owns one criterion object; it asks ``scores(name)`` at a refresh (``None``: rank by
``|w|``) and hands the scores to ``masks.py``. Framework-free apart from torch tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .config import CRITERIA


class Magnitude:
    """Rank by ``|w|``: no scores, nothing to accumulate, nothing to save."""

    name = "magnitude"
    needs_gradients = False

    def accumulate(self, name: str, w: Tensor, grad: Tensor | None) -> bool:
        return True

    def scores(self, name: str) -> Tensor | None:
        return None

    def refreshed(self, name: str) -> None:
        pass

    def state(self) -> dict[str, Tensor]:
        return {}

    def load_state(self, scores: Mapping[str, Tensor]) -> None:
        pass


class Movement:
    """Movement scores ``S -= w * grad`` per step, one float32 tensor per parameter.

    ``shapes``: name -> shape of the tensor this process holds (a DTensor's local shard);
    ``devices``: name -> where the scores live (beside the weight or shard, where the gradient is).
    """

    name = "movement"
    needs_gradients = True

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], devices: Mapping[str, torch.device]) -> None:
        self._scores = {n: torch.zeros(shape, dtype=torch.float32, device=devices[n]) for n, shape in shapes.items()}
        self._seen = dict.fromkeys(shapes, 0)  # steps with a gradient since the last refresh

    def accumulate(self, name: str, w: Tensor, grad: Tensor | None) -> bool:
        """``S[name] -= w * grad`` (float32); returns False when there is no gradient to add, or when
        the result would not be finite (nothing is added then: see the module's rule)."""
        new = self.proposed(name, w, grad)
        if new is None or not bool(torch.isfinite(new).all()):
            return False
        self.commit(name, new)
        return True

    def proposed(self, name: str, w: Tensor, grad: Tensor | None) -> Tensor | None:
        """``S[name] - w * grad`` (float32, a new tensor; the scores unchanged), or None without a gradient."""
        if grad is None:
            return None
        return self._scores[name].addcmul(w.detach().float(), grad.detach().float(), value=-1.0)

    def commit(self, name: str, new: Tensor) -> None:
        """Make ``new`` (a ``proposed`` tensor, checked finite) the scores of ``name``: one more step seen."""
        self._scores[name] = new
        self._seen[name] += 1

    def scores(self, name: str) -> Tensor | None:
        """The accumulated scores of ``name`` (float32, the parameter's or shard's shape).

        Raises ``RuntimeError`` when no gradient was seen since the last refresh (``prune()`` called
        after ``zero_grad()``): the mask would ignore the training since then, or be arbitrary."""
        if not self._seen[name]:
            raise RuntimeError(
                f"criterion='movement' has no gradient of {name} since the last mask refresh: call "
                "prune() after loss.backward() and optimizer.step(), before optimizer.zero_grad()"
            )
        return self._scores[name]

    def refreshed(self, name: str) -> None:
        """A refresh used the scores of ``name``: they keep accumulating; the next refresh again needs
        a gradient seen after this one."""
        self._seen[name] = 0

    def state(self) -> dict[str, Tensor]:
        """The scores as CPU float32 tensors (copies), by parameter name."""
        return {name: s.detach().cpu().clone() for name, s in self._scores.items()}

    def load_state(self, scores: Mapping[str, Tensor]) -> None:
        """Inverse of ``state()``: validated float32 tensors of the right shapes
        (``pruner_state.validate_state``). A parameter missing from ``scores`` starts from zero; the
        gradient check of the next refresh counts the steps behind a loaded score as seen when it is
        not all zero (a state saved before any gradient holds zeros)."""
        for name, current in self._scores.items():
            saved = scores.get(name)
            if saved is None:
                current.zero_()
                self._seen[name] = 0
            else:
                current.copy_(saved)
                self._seen[name] = int(bool(saved.any()))


def make_criterion(
    criterion: str, shapes: Mapping[str, tuple[int, ...]], devices: Mapping[str, torch.device]
) -> Magnitude | Movement:
    """The criterion object for a validated ``criterion`` name (``config.check_choice``)."""
    return Movement(shapes, devices) if criterion == "movement" else Magnitude()


__all__ = ["CRITERIA", "Magnitude", "Movement", "make_criterion"]
