"""Channel labels: an int64 tensor beside each traced activation saying which channel each element is.

A label tensor has the activation's shape; an entry is the id of the channel (an output row of some
layer) the element belongs to, or ``-1`` (not a channel of any layer: an input, a constant, a mix).
The rules here say how labels flow through an operation and which channels it couples: two channels
*coupled* (``UnionFind.union``) must be removed together; a channel *pinned* can never be removed.

The one rule behind all of them: an operand that cannot be sliced (a constant, a buffer, a
parameter no module owns) and is not broadcast along a dim forbids removing single elements along
that dim, so every channel met along such a line is coupled with the others on it. A reduction over
a dim couples the same way (a LayerNorm over the hidden size makes the whole hidden size one unit).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .unionfind import UnionFind

UNLABELED = -1


class Couplings:
    """The relations found so far: ``uf`` joins channels removed together, ``pinned`` maps a channel
    that must stay to the first reason found."""

    def __init__(self) -> None:
        self.uf = UnionFind()
        self.pinned: dict[int, str] = {}

    def pin(self, values: Tensor, reason: str) -> None:
        """Pin every channel id in ``values`` (any shape; ``-1`` entries ignored)."""
        for v in torch.unique(values[values >= 0]).tolist():
            self.pinned.setdefault(int(v), reason)

    def union_pairs(self, a: Tensor, b: Tensor, reason: str) -> None:
        """Couple ``a[i]`` with ``b[i]`` where both are channels; pin the channel where only one is."""
        a, b = a.reshape(-1), b.reshape(-1)
        differ = (a >= 0) & (b >= 0) & (a != b)
        if bool(differ.any()):
            x, y = a[differ], b[differ]
            span = int(torch.maximum(x.max(), y.max())) + 1
            keys = torch.unique(x * span + y)  # one int per distinct pair: a 1-D unique, fast
            for key in keys.tolist():
                self.uf.union(key // span, key % span)
        self.pin(a[(a >= 0) & (b < 0)], reason)
        self.pin(b[(b >= 0) & (a < 0)], reason)

    def along(self, label: Tensor, dims: Iterable[int], reason: str) -> None:
        """Couple every channel on each line of ``label`` along each of ``dims`` (one unit per line)."""
        for d in sorted({d % label.dim() for d in dims} if label.dim() else set()):
            if label.shape[d] > 1:
                first = label.narrow(d, 0, 1).expand_as(label)
                if not torch.equal(label, first):  # constant along d (a channel over positions): nothing to do
                    self.union_pairs(label, first, reason)

    def merge(self, labels: Sequence[Tensor], reason: str) -> Tensor:
        """Labels of an elementwise result whose operands (broadcast to one shape) have ``labels``:
        the channels meeting at an element are coupled; a channel meeting an unlabeled element is pinned."""
        out = labels[0]
        for other in labels[1:]:
            self.union_pairs(out, other, reason)
            out = torch.where(out >= 0, out, other)
        return out


def varying_dims(label: Tensor) -> list[int]:
    """Dims along which ``label`` is not constant."""
    return [d for d in range(label.dim()) if label.shape[d] > 1 and bool((label != label.narrow(d, 0, 1)).any())]


def fixed_operand_dims(label_shape: torch.Size, operand_shape: torch.Size) -> list[int]:
    """Dims of a result of ``label_shape`` along which an operand of ``operand_shape`` (broadcast,
    right-aligned) is not of size 1: the dims it forbids shrinking."""
    offset = len(label_shape) - len(operand_shape)
    return [offset + i for i, n in enumerate(operand_shape) if n != 1 and offset + i >= 0]


def matmul_labels(
    couplings: Couplings,
    la: Tensor | None,
    lb: Tensor | None,
    a_shape: torch.Size,
    b_shape: torch.Size,
    reason: str,
) -> Tensor | None:
    """Labels of ``a @ b`` (``a [..., M, K]``, ``b [..., K, N]``; a label of None: an operand without
    channels), shaped like the result ``[*batch, M, N]``.

    The contracted dim K is one unit per line on each side. Where both sides have labels,
    everything in ``a``'s rows and ``b``'s columns of one batch index is coupled (a head of
    attention: its queries, keys and values). An operand without labels is a fixed tensor: its
    batch dims that are not 1 and its contracted dim forbid shrinking there.
    """
    batch = torch.broadcast_shapes(a_shape[:-2], b_shape[:-2])
    m, n = a_shape[-2], b_shape[-1]
    if la is not None:
        couplings.along(la, [-1], reason)
    if lb is not None:
        couplings.along(lb, [-2], reason)
    if la is None and lb is None:
        return None
    if lb is None:
        assert la is not None
        couplings.along(la, fixed_operand_dims(la.shape[:-2], b_shape[:-2]), reason)
        return la[..., :, :1].expand(*batch, m, n)
    if la is None:
        couplings.along(lb, fixed_operand_dims(lb.shape[:-2], a_shape[:-2]), reason)
        return lb[..., :1, :].expand(*batch, m, n)
    rows = la[..., :, 0].expand(*batch, m)  # [*batch, M]
    cols = lb[..., 0, :].expand(*batch, n)  # [*batch, N]
    both = torch.cat([rows, cols], dim=-1)  # [*batch, M + N]
    couplings.along(both, [-1], reason)
    return both[..., :1].unsqueeze(-1).expand(*batch, m, n)  # one channel per batch index stands for all


def broadcast_label(label: Tensor, shape: torch.Size) -> Tensor | None:
    """``label`` broadcast to ``shape``, or None where it does not broadcast."""
    try:
        return label.expand(shape)
    except RuntimeError:
        return None


def full_unlabeled(shape: torch.Size, device: torch.device | None = None) -> Tensor:
    """An int64 tensor of ``shape`` whose every element is ``UNLABELED`` (no channel label)."""
    return torch.full(tuple(shape), UNLABELED, dtype=torch.int64, device=device)
