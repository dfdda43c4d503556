"""Wanda (Sun, Liu, Bair & Kolter 2024): score each weight by ``|w_ij| * ||x_j||_2``, its magnitude
times the norm of the input feature it multiplies over all calibration tokens; no weight update.

The score goes to ``masks.py`` like any criterion's, so Wanda gets every pattern with the usual
budgets and tie rule: unstructured per tensor (the paper compares within each output row; that is
``balance="fix"`` with ``bank_size`` = the row length), bank-balanced, N:M.
"""

from __future__ import annotations

import torch
from torch import Tensor


def scores(w_matrix: Tensor, feature_norms: Tensor) -> Tensor:
    """``|W| * ||x||``: ``w_matrix [O, D]``, ``feature_norms [O, D]`` or ``[D]`` (per column) -> ``[O, D]``
    (float32, or float64 when either is)."""
    dtype = torch.promote_types(torch.promote_types(w_matrix.dtype, feature_norms.dtype), torch.float32)
    return w_matrix.detach().to(dtype).abs() * feature_norms.to(dtype)


__all__ = ["scores"]
