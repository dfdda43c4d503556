"""Bank geometry, defined once: rows, banks and budgets, and the kernels' strides agree with the row view."""

from __future__ import annotations

import math

import pytest
import torch

from pruning_tools import geometry as G

SHAPES = [(5,), (7, 9), (4, 3, 3, 3), (6, 5, 2), (3, 4, 2, 2, 2), (1, 64), (65, 1, 3, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["channels_last", "flat", "last_dim"])
@pytest.mark.parametrize("out_dim", [0, 1])
def test_strides_walk_exactly_the_row_view(shape, layout, out_dim):
    if out_dim == 1 and len(shape) < 2:
        return
    x = torch.arange(math.prod(shape)).reshape(shape)  # each element holds its flat index
    rows = G.to_rows(x, layout, out_dim)  # [rows, row_len]
    strides = G.row_strides(shape, layout, out_dim)
    if strides is None:  # flat / last-dim ConvTranspose: the kernels do not walk it (the PyTorch path serves it)
        assert out_dim == 1 and layout in ("flat", "last_dim") and len(shape) > 2
        return
    assert (strides.rows, strides.row_len) == tuple(rows.shape)
    assert (G.row_count(shape, layout, out_dim), G.row_length(shape, layout, out_dim)) == tuple(rows.shape)
    walked = torch.tensor(
        [
            [
                (r // strides.group) * strides.group_stride + r % strides.group + j * strides.step
                for j in range(strides.row_len)
            ]
            for r in range(strides.rows)
        ]
    ).reshape(rows.shape)
    assert torch.equal(walked, rows)
    assert torch.equal(G.from_rows(rows, shape, layout, out_dim), x)


def test_budgets_of_full_and_tail_banks():
    assert G.bank_budget(128, 64, 0.9375) == G.BankBudget(2, 4, 0, 0)
    assert G.bank_budget(127, 64, 0.9375) == G.BankBudget(1, 4, 63, 4)  # conv3 of the MNIST CNN
    assert G.bank_budget(6, 4, 0.5) == G.BankBudget(1, 2, 2, 1)  # 2:4 with a tail of 2
    assert G.bank_budget(3, 64, 0.99) == G.BankBudget(0, 1, 3, 1)  # at least one kept
    assert G.keep_count(64, 0.9) == 6 and G.keep_count(10, 0.25) == 8  # half up: 7.5 -> 8


def test_split_banks_shapes():
    full, tail = G.split_banks(torch.zeros(3, 100), 64)
    assert full.shape == (3, 1, 64) and tail.shape == (3, 36)
    full, tail = G.split_banks(torch.zeros(3, 128), 64)
    assert full.shape == (3, 2, 64) and tail.shape == (3, 0)


def test_empty_tensors_have_no_rows_and_no_division_by_zero():
    assert G.row_length((0, 4)) == 4 and G.row_count((0, 4)) == 0
    assert G.row_length((4, 0)) == 0 and G.row_count((4, 0)) == 4  # four empty rows
    assert G.realised_sparsity((0, 4), "fix", 0.5) == 0.0


def test_nd_parameters_outside_convs_are_rows_along_the_last_dim():
    assert G.param_layout((1, 197, 768), conv_owned=False, layout="channels_last") == "last_dim"
    assert G.param_layout((64, 3, 7, 7), conv_owned=True, layout="channels_last") == "channels_last"
    assert G.param_layout((768, 768), conv_owned=False, layout="flat") == "flat"  # 2-D: every layout agrees
    x = torch.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert torch.equal(G.to_rows(x, "last_dim"), x.reshape(6, 4))
    for layout in ("channels_last", "flat", "last_dim"):  # 2-D weights read the same in every layout
        assert torch.equal(G.to_rows(x[0], layout), x[0]) and torch.equal(G.to_rows(x[0], layout, 1), x[0].T)


@pytest.mark.parametrize("row_len", [1, 3, 30, 63, 100, 127, 222, 1000])
@pytest.mark.parametrize("bank_size", [4, 16, 64])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75, 0.9, 0.9375, 0.95, 0.98])
def test_a_tensor_pruned_at_its_target_is_balanced_by_its_measured_sparsity(row_len, bank_size, sparsity):
    """The checker without a target must accept what the pruner made with one (tails round either way)."""
    target = G.bank_budget(row_len, bank_size, sparsity)
    kept = target.full_banks * target.keep + target.tail_keep  # per row, what the pruner keeps
    measured = G.measured_budget(row_len, bank_size, 1 - kept / row_len)
    assert measured.tail_keep >= target.tail_keep
    if target.full_banks:
        assert measured.keep >= target.keep
    assert measured.tail_keep <= measured.keep  # never looser than a full bank


def test_bank_geometry_defaults_and_is_frozen():
    geometry = G.BankGeometry()
    assert (geometry.bank_size, geometry.layout, geometry.out_dim) == (64, "channels_last", 0)
    with pytest.raises(AttributeError):
        geometry.bank_size = 4  # type: ignore[misc]
    assert G.BankGeometry(4.0, "flat", 1) == G.BankGeometry(4, "flat", 1)
    assert type(G.BankGeometry(4.0).bank_size) is int


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"bank_size": 1}, "bank_size=1"),
        ({"bank_size": 2**31}, "bank_size=2147483648"),
        ({"bank_size": 4.5}, "bank_size=4.5"),
        ({"bank_size": True}, "bank_size=True"),
        ({"layout": "rows"}, "layout='rows'"),
        ({"out_dim": 2}, "out_dim=2"),
        ({"out_dim": True}, "out_dim=True"),
    ],
)
def test_bank_geometry_refuses_bad_fields_by_name(kwargs, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        G.BankGeometry(**kwargs)


def test_spec_and_packed_tensor_expose_their_geometry():
    from pruning_tools.config import ParamSpec
    from pruning_tools.export import pack

    spec = ParamSpec(0.5, "fix", 4, "flat", 1, (8, 6))
    assert spec.geometry == G.BankGeometry(4, "flat", 1)
    assert "geometry" not in spec.to_dict()  # the file format keeps its three keys
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 4.0]])
    assert pack(w, bank_size=4).geometry == G.BankGeometry(4)
