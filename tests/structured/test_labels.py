"""The label rules on their own: which channels an operation couples, which it pins."""

from __future__ import annotations

import torch

from pruning_tools.structured import labels as L
from pruning_tools.structured.groups import kept_units, removes_everything


def sets(c: L.Couplings, ids: range) -> list[set[int]]:
    out: dict[int, set[int]] = {}
    for i in ids:
        out.setdefault(c.uf.find(i), set()).add(i)
    return sorted(out.values(), key=min)


def test_merge_couples_channels_meeting_and_pins_a_channel_meeting_none() -> None:
    c = L.Couplings()
    a = torch.tensor([0, 1, 2, 3])
    b = torch.tensor([4, 5, 6, -1])
    out = c.merge([a, b], "add")
    assert out.tolist() == [0, 1, 2, 3]
    assert sets(c, range(7)) == [{0, 4}, {1, 5}, {2, 6}, {3}]
    assert set(c.pinned) == {3}


def test_along_makes_each_line_one_unit() -> None:
    c = L.Couplings()
    heads = torch.arange(6).view(2, 3)  # [head, head_dim]
    c.along(heads, [1], "rope")
    assert sets(c, range(6)) == [{0, 1, 2}, {3, 4, 5}]
    assert not c.pinned


def test_fixed_operand_dims_are_its_non_broadcast_dims() -> None:
    assert L.fixed_operand_dims(torch.Size([2, 4, 8, 16]), torch.Size([8, 16])) == [2, 3]
    assert L.fixed_operand_dims(torch.Size([2, 4, 8, 16]), torch.Size([1, 1, 8, 1])) == [2]


def test_matmul_couples_a_head_and_grouped_query_heads() -> None:
    c = L.Couplings()
    q = torch.arange(8).view(1, 4, 1, 2).expand(1, 4, 3, 2)  # 4 query heads of dim 2, 3 tokens
    k = (8 + torch.arange(4)).view(1, 2, 1, 2).expand(1, 2, 3, 2).repeat_interleave(2, dim=1)  # 2 kv heads, shared
    scores = L.matmul_labels(c, q, k.transpose(-2, -1), q.shape, k.transpose(-2, -1).shape, "attention")
    assert scores is not None and scores.shape == (1, 4, 3, 3)
    assert sets(c, range(12)) == [{0, 1, 2, 3, 8, 9}, {4, 5, 6, 7, 10, 11}]  # kv head j with query heads 2j, 2j+1


def test_matmul_with_a_fixed_operand_keeps_row_channels() -> None:
    c = L.Couplings()
    rows = torch.arange(3).view(3, 1).expand(3, 5)  # channel per row, 5 positions
    out = L.matmul_labels(c, rows, None, rows.shape, torch.Size([5, 7]), "mix positions")
    assert out is not None and out[:, 0].tolist() == [0, 1, 2] and not c.pinned
    assert sets(c, range(3)) == [{0}, {1}, {2}]


def test_kept_units_rounding_and_refusal() -> None:
    assert kept_units(16, 0.5, 1, 1) == 8
    assert kept_units(16, 0.7, 8, 1) == 8  # 16 - round(11.2) = 5 -> 8
    assert kept_units(10, 0.5, 8, 1) == 8
    assert kept_units(3, 0.5, 64, 1) == 3  # cannot round: keeps all, never more than it has
    assert removes_everything(8, 0.99) and not removes_everything(8, 0.9)
