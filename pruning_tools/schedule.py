"""The pruning schedule: a pure function of the step counter.

No tensors and no framework here. Steps count ``prune()`` calls: the first call is ``t = 1``.

- ``t <= pretrain_step``: dense warm-up, masks untouched, target = initial sparsity.
- ``pretrain_step < t <= pretrain_step + sparse_step``: the target climbs on the cubic curve of
  Zhu & Gupta (2017), ``s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / sparse_step) ** 3`` with
  ``t0 = pretrain_step``; masks are refreshed when ``(t - t0) % frequency == 0`` and always at
  the last step ``t = t0 + sparse_step``, where the target is exactly ``s_f``.
- ``sparse_step == 0``: one-shot pruning to ``s_f`` at ``t = pretrain_step + 1``.
- afterwards: masks frozen at ``s_f``.
"""

from __future__ import annotations

from typing import NamedTuple


class ScheduleStep(NamedTuple):
    """What the schedule says about one step."""

    refresh: bool  # recompute the masks at this step?
    target: float  # target sparsity in [0, 1) at this step


def target_sparsity(t: int, pretrain_step: int, sparse_step: int, initial: float, final: float) -> float:
    """Target sparsity at step ``t`` (a fraction of zeros in [0, 1)).

    >>> target_sparsity(0, 10, 100, 0.0, 0.9)
    0.0
    >>> round(target_sparsity(60, 10, 100, 0.0, 0.9), 6)
    0.7875
    >>> target_sparsity(110, 10, 100, 0.0, 0.9)
    0.9
    """
    if t <= pretrain_step:
        return initial
    if sparse_step == 0 or t >= pretrain_step + sparse_step:
        return final
    progress = (t - pretrain_step) / sparse_step
    return final + (initial - final) * (1.0 - progress) ** 3


def is_refresh_step(t: int, pretrain_step: int, sparse_step: int, frequency: int) -> bool:
    """Whether the masks are recomputed at step ``t``.

    >>> [t for t in range(1, 20) if is_refresh_step(t, 5, 10, 4)]
    [9, 13, 15]
    >>> [t for t in range(1, 5) if is_refresh_step(t, 2, 0, 100)]
    [3]
    """
    if sparse_step == 0:
        return t == pretrain_step + 1
    if not pretrain_step < t <= pretrain_step + sparse_step:
        return False
    return (t - pretrain_step) % frequency == 0 or t == pretrain_step + sparse_step


def schedule_step(
    t: int, pretrain_step: int, sparse_step: int, frequency: int, initial: float, final: float
) -> ScheduleStep:
    """``(refresh, target)`` for step ``t``; see the module docstring for the rules."""
    return ScheduleStep(
        is_refresh_step(t, pretrain_step, sparse_step, frequency),
        target_sparsity(t, pretrain_step, sparse_step, initial, final),
    )


def last_step(pretrain_step: int, sparse_step: int) -> int:
    """The step after which masks never change (the last refresh step)."""
    return pretrain_step + max(sparse_step, 1)
