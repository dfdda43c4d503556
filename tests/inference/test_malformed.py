"""A crafted packed file (or packed tensors in memory, or a state_dict) never reaches the C kernel:
a ValueError names the file and the tensor first. The kernel's own checks hold too (they also run
under AddressSanitizer in CI: scripts/test.sh)."""

from __future__ import annotations

import ctypes
import json
import shutil

import pytest
import safetensors.torch
import torch
from torch import nn

from pruning_tools import _native, load_bank_sparse
from pruning_tools.export import METADATA_KEY, PackedTensor, check_packed, load_packed, pack, read_packed, save_packed
from pruning_tools.inference import BankSparseConv, BankSparseLinear, native, ops
from pruning_tools.masks import bank_mask

HAVE_CC = shutil.which("cc") is not None
native_only = pytest.mark.skipif(not HAVE_CC, reason="no C compiler")


def model() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(100, 32), nn.ReLU(), nn.Linear(32, 8))  # rows of 100: one bank of 64, tail 36
    with torch.no_grad():
        m[0].weight.mul_(bank_mask(m[0].weight, None, 0.9375))
    return m


@pytest.fixture
def packed_file(tmp_path):
    path = tmp_path / "good.safetensors"
    save_packed(model().state_dict(), path, bank_size=64)
    return path


def rewrite(src, dst, *, meta=None, tensors=None):
    """``dst``: ``src`` with its metadata entry of "0.weight" and some tensors changed."""
    flat = safetensors.torch.load_file(str(src))
    with safetensors.safe_open(str(src), framework="pt") as f:
        metadata = json.loads(f.metadata()[METADATA_KEY])
    if meta:
        metadata["packed"]["0.weight"].update(meta)
    for key, value in (tensors or {}).items():
        if value is None:
            del flat[key]
        else:
            flat[key] = value
    safetensors.torch.save_file(flat, str(dst), metadata={METADATA_KEY: json.dumps(metadata)})
    return dst


def part(path, name):
    return safetensors.torch.load_file(str(path))[f"0.weight::{name}"]


def corruptions(path):
    """(label, metadata changes, tensor changes, what the error says)."""
    idx, tail_idx, values = part(path, "indices"), part(path, "tail_indices"), part(path, "values")
    bad_idx = idx.clone()
    bad_idx[3, 0, 1] = 200
    bad_tail = tail_idx.clone()
    bad_tail[5, -1] = 36  # the tail holds positions 0..35
    unsorted = idx.clone()
    unsorted[0, 0, 1] = unsorted[0, 0, 0]
    return [
        ("bank_size 100000", {"bank_size": 100000}, {}, "bank_size 100000"),
        ("bank_size 1", {"bank_size": 1}, {}, "bank_size 1"),
        ("bank_size as text", {"bank_size": "64"}, {}, "bank_size '64'"),
        ("an index of 200 in a bank of 64", {}, {"0.weight::indices": bad_idx}, "indices holds 200"),
        ("a tail index past the tail", {}, {"0.weight::tail_indices": bad_tail}, "tail_indices holds 36"),
        ("indices not increasing", {}, {"0.weight::indices": unsorted}, "strictly increasing"),
        ("values with fewer rows", {}, {"0.weight::values": values[:-1].clone()}, "values of shape"),
        ("more rows in the metadata", {"shape": [33, 100]}, {}, "values of shape"),
        (
            "k larger than the bank",
            {"k": 70},
            {
                "0.weight::values": torch.zeros(32, 1, 70),
                "0.weight::indices": torch.zeros(32, 1, 70, dtype=torch.uint8),
            },
            "k <= 64",
        ),
        ("indices int32", {}, {"0.weight::indices": idx.int()}, "indices torch.int32"),
        ("integer values", {"dtype": "int32"}, {"0.weight::values": values.int()}, "floating-point"),
        ("tail dtype", {}, {"0.weight::tail_values": part(path, "tail_values").double()}, "one floating-point dtype"),
        ("indices shape", {}, {"0.weight::indices": idx[:, :, :3].clone()}, "indices of shape"),
        ("tail_indices shape", {}, {"0.weight::tail_indices": tail_idx[:, :1].clone()}, "tail_indices of shape"),
        (
            "tail longer than the tail",
            {},
            {
                "0.weight::tail_values": torch.zeros(32, 40),
                "0.weight::tail_indices": torch.zeros(32, 40, dtype=torch.uint8),
            },
            "tail_k <= 36",
        ),
        ("layout", {"layout": "nhwc"}, {}, "layout 'nhwc'"),
        ("out_dim", {"out_dim": 2}, {}, "out_dim 2"),
        ("negative size", {"shape": [-32, 100]}, {}, "shape"),
        ("one dim", {"shape": [3200]}, {}, "shape"),
        ("huge shape", {"shape": [2**40, 2**40]}, {}, "more than"),
        ("shape as text", {"shape": "32x100"}, {}, "metadata shape"),
        ("metadata k", {"k": 3}, {}, "does not match its metadata"),
        ("missing tensor", {}, {"0.weight::tail_indices": None}, "has no tensor"),
    ]


def test_every_corruption_is_a_value_error_naming_file_and_tensor(packed_file, tmp_path):
    for i, (label, meta, tensors, says) in enumerate(corruptions(packed_file)):
        bad = rewrite(packed_file, tmp_path / f"bad{i}.safetensors", meta=meta, tensors=tensors)
        for read in (read_packed, load_packed, lambda p: BankSparseLinear.from_file(p, "0")):
            with pytest.raises(ValueError) as caught:
                read(bad)
            message = str(caught.value)
            assert str(bad) in message and "'0.weight'" in message and says in message, (label, message)
        with pytest.raises(ValueError, match="0.weight"):
            load_bank_sparse(model(), bad)


@pytest.mark.parametrize(
    "packed", [[1, 2], {"0.weight": 5}, {"0.weight": {}}], ids=["not an object", "entry not an object", "no keys"]
)
def test_damaged_metadata_entries(packed_file, tmp_path, packed):
    flat = safetensors.torch.load_file(str(packed_file))
    bad = tmp_path / "bad.safetensors"
    meta = {"format": "pruning_tools.packed/1", "packed": packed}
    safetensors.torch.save_file(flat, str(bad), metadata={METADATA_KEY: json.dumps(meta)})
    with pytest.raises(ValueError, match=str(bad)):
        read_packed(bad)


def good_packed() -> PackedTensor:
    return pack(model()[0].weight.detach(), 64)


def test_in_memory_packed_tensors_are_checked_the_same_way():
    p = good_packed()
    bad = PackedTensor(p.values, p.indices.clone(), p.tail_values, p.tail_indices, p.shape, p.bank_size)
    bad.indices[0, 0, 0] = 255
    for build in (lambda: BankSparseLinear(bad), lambda: check_packed(bad, "mine")):
        with pytest.raises(ValueError, match="indices holds 255"):
            build()
    shifted = PackedTensor(p.values, p.indices, p.tail_values, p.tail_indices, (32, 200), p.bank_size)
    with pytest.raises(ValueError, match="values of shape"):
        BankSparseLinear(shifted)
    huge_bank = PackedTensor(p.values, p.indices, p.tail_values, p.tail_indices, p.shape, 100000)
    with pytest.raises(ValueError, match="int32"):  # banks of 100000 need int32 positions
        BankSparseLinear(huge_bank)
    conv = pack(torch.randn(8, 64, 3, 3) * bank_mask(torch.randn(8, 64, 3, 3), None, 0.5), 64)
    broken = PackedTensor(conv.values[:-1], conv.indices[:-1], conv.tail_values[:-1], conv.tail_indices[:-1],
                          conv.shape, 64)  # fmt: skip
    with pytest.raises(ValueError, match="values of shape"):
        BankSparseConv(broken)


def test_state_dict_with_bad_indices_is_refused(tmp_path):
    sparse = BankSparseLinear(good_packed())
    state = {k: v.clone() for k, v in sparse.state_dict().items()}
    state["tail_indices"][2, 0] = 99
    with pytest.raises(ValueError, match="tail_indices holds 99"):
        sparse.load_state_dict(state)
    x = torch.randn(2, 100)
    torch.testing.assert_close(sparse(x), BankSparseLinear(good_packed())(x))  # unchanged


def test_the_operators_check_what_they_are_given():
    p = good_packed()
    idx = p.indices.clone()
    idx[1, 0, 2] = 64
    x = torch.randn(3, 100)
    with pytest.raises(ValueError, match="indices holds 64"):
        ops.bank_linear(x, p.values, idx, p.tail_values, p.tail_indices, None, 64)
    with pytest.raises(ValueError, match="values of shape"):  # an input of other width: other banks
        ops.bank_linear(torch.randn(3, 300), p.values, p.indices, p.tail_values, p.tail_indices, None, 64)
    with pytest.raises(ValueError, match="bias of shape"):
        ops.bank_linear(x, p.values, p.indices, p.tail_values, p.tail_indices, torch.zeros(5), 64)
    with pytest.raises(ValueError, match="whole number"):
        ops.bank_conv2d(torch.randn(1, 100, 4, 4), p.values, p.indices, p.tail_values, p.tail_indices, None, 64,
                        [3, 3], [1, 1], [1, 1, 1, 1], [1, 1])  # fmt: skip


@native_only
def test_the_kernel_refuses_what_it_did_not_check():
    with _native.use_engine("native"):
        lib = _native.library("bank_sparse")
        p = good_packed()
        d = native.describe(p.values, p.indices, p.tail_values, p.tail_indices, None, 64, 100)
        x, y = torch.randn(2, 100), torch.empty(2, 32)
        assert lib.bank_linear(ctypes.addressof(d.weight), x.data_ptr(), 2, 100, y.data_ptr()) == 0
        assert lib.bank_linear(ctypes.addressof(d.weight), x.data_ptr(), 2, 101, y.data_ptr()) == -3  # in != 100
        tampered = native.BankWeight.from_buffer_copy(d.weight)
        tampered.rows = 33  # one row more than the buffers hold
        assert lib.bank_linear(ctypes.addressof(tampered), x.data_ptr(), 2, 100, y.data_ptr()) == -2
        tampered = native.BankWeight.from_buffer_copy(d.weight)
        tampered.stamp = 0
        assert lib.bank_linear(ctypes.addressof(tampered), x.data_ptr(), 2, 100, y.data_ptr()) == -2
        bad = p.indices.clone()
        bad[0, 0, 3] = 77
        weight = native.BankWeight.from_buffer_copy(d.weight)
        weight.idx = bad.data_ptr()
        where = ctypes.c_int64()
        assert lib.bank_check(ctypes.byref(weight), ctypes.byref(where)) == -4 and where.value == 3
        geometry = native.ConvGeometry(1, 99, 4, 4, 1, 1, 1, 1, 0, 0, 1, 1, 4, 4)  # 99 channels, weight has 100
        assert lib.bank_conv2d(ctypes.addressof(d.weight), ctypes.addressof(geometry), x.data_ptr(), y.data_ptr()) == -3
        with pytest.raises(ValueError, match="index outside its bank"):
            native.describe(p.values, bad, p.tail_values, p.tail_indices, None, 64, 100)
