"""BankSparseLinear / BankSparseConv equal the masked dense layers, on the C kernel and the fallback,
under torch.compile, torch.jit.trace and torch.export, through deepcopy and state_dict."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pruning_tools import _native
from pruning_tools.export import NotBankBalancedError, save_packed
from pruning_tools.inference import BankSparseConv, BankSparseLinear, reference
from pruning_tools.masks import bank_mask

from ..fake_layers import Conv1D
from .conftest import HAVE_CC, TOL


def pruned_linear(out_f, in_f, sparsity, bank_size=64, bias=True, seed=0):
    torch.manual_seed(seed)
    fc = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        fc.weight.mul_(bank_mask(fc.weight, None, sparsity, bank_size))
    return fc


def pruned(conv: nn.Module, sparsity: float, bank_size: int = 64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv.reset_parameters()
    with torch.no_grad():
        conv.weight.mul_(bank_mask(conv.weight, None, sparsity, bank_size))
        if conv.bias is not None:
            conv.bias.normal_()
    return conv


@pytest.mark.parametrize(
    "out_f, in_f, bank_size",
    [
        (64, 256, 64),
        (10, 100, 64),
        (33, 70, 64),
        (5, 3, 64),
        (17, 193, 64),
        (40, 96, 16),
        (24, 48, 4),
        (9, 400, 200),
        (6, 700, 300),  # int16 indices: the fallback serves them on both paths
    ],
)
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.9375])
def test_equals_masked_dense_linear(path, out_f, in_f, bank_size, sparsity):
    fc = pruned_linear(out_f, in_f, sparsity, bank_size, bias=out_f % 2 == 0)
    sparse = BankSparseLinear.from_linear(fc, bank_size)
    with torch.no_grad():
        for batch in (1, 2, 7, 8, 9, 16, 17, 33, 64, 65, 100, 130):
            x = torch.randn(batch, in_f)
            torch.testing.assert_close(sparse(x), F.linear(x, fc.weight, fc.bias), **TOL)


@pytest.mark.parametrize("keep", range(1, 17))
def test_batch_one_with_any_keep_count(path, keep):
    """Batch 1, banks of 64 keeping 1-16 each (the register-permute path of the avx512 build), rows in
    groups of 16 // keep and left over, a tail bank, every level this CPU runs."""
    for out_f, in_f in ((37, 256), (16, 64 * 3 + 20)):
        fc = pruned_linear(out_f, in_f, 1 - keep / 64, 64, bias=True)
        sparse = BankSparseLinear.from_linear(fc, 64)
        assert sparse.values.shape[-1] == keep
        x = torch.randn(1, in_f)
        with torch.no_grad():
            for level in _native.isa.supported():
                with _native.use_isa(level):
                    torch.testing.assert_close(sparse(x), F.linear(x, fc.weight, fc.bias), **TOL)


CONVS = [
    # module, input shape
    (nn.Conv2d(64, 40, 3, padding=1), (2, 64, 9, 11)),
    (nn.Conv2d(96, 24, 3, stride=2, padding=1, bias=False), (1, 96, 14, 15)),
    (nn.Conv2d(64, 16, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)), (2, 64, 12, 13)),
    (nn.Conv2d(70, 32, 3, padding=2, dilation=2), (1, 70, 10, 10)),  # tail banks (70 = 64 + 6)
    (nn.Conv2d(130, 8, 7, stride=3, padding=3), (1, 130, 23, 19)),  # two banks + tail, stride 3
    (nn.Conv2d(64, 8, 2, padding="same"), (2, 64, 6, 7)),  # asymmetric 'same' padding
    (nn.Conv2d(64, 8, 3, padding=1, padding_mode="reflect"), (1, 64, 6, 6)),
    (nn.Conv2d(64, 8, 3, padding=1, padding_mode="circular"), (1, 64, 5, 7)),
    (nn.Conv2d(64, 12, 4, stride=4), (1, 64, 16, 16)),  # patchify
    (nn.Conv2d(96, 40, 1), (2, 96, 5, 7)),
    (nn.Conv2d(64, 16, 1, stride=2, bias=False), (3, 64, 9, 8)),
    (nn.Conv2d(64, 16, 1), (2, 64, 4, 4)),  # 1x1 on a plane of whole vectors: read in place
    (nn.Conv2d(64, 16, 3, padding=1), (1, 64, 1, 1)),  # one pixel
    (nn.Conv2d(80, 8, 3, padding=1), (2, 80, 17, 18)),  # rows of 16 pixels and more, channels past 64
    (nn.Conv2d(72, 8, 1), (1, 72, 7, 7)),  # 1x1, 49 pixels: runs that end inside a block of 16
    (nn.Conv2d(64, 8, 3), (1, 64, 20, 21)),  # no padding: every pixel read
    (nn.Conv1d(80, 24, 1), (2, 80, 11)),
    (nn.Conv1d(64, 24, 5, stride=2, padding=2), (2, 64, 31)),
    (nn.Conv1d(128, 8, 3, dilation=3), (1, 128, 20)),
    (nn.Conv3d(64, 8, 1), (1, 64, 2, 3, 4)),
    (nn.Conv3d(64, 8, 1, stride=2), (1, 64, 3, 5, 4)),
]


# every geometry on NCHW input, and the 4-D ones channels-last too (the kernel reads each pixel's channels)
LAYOUTS = [(conv, shape, "nchw") for conv, shape in CONVS] + [
    (conv, shape, "channels_last") for conv, shape in CONVS if len(shape) == 4
]


@pytest.mark.parametrize(
    "conv, shape, layout", LAYOUTS, ids=lambda v: str(v) if isinstance(v, (tuple, str)) else type(v).__name__
)
@pytest.mark.parametrize("sparsity", [0.5, 0.9375])
def test_conv_equals_masked_dense_conv(path, conv, shape, sparsity, layout):
    bank_size = 64 if conv.in_channels >= 64 else 16
    conv = pruned(conv, sparsity, bank_size)
    sparse = BankSparseConv.from_conv(conv, bank_size)
    x = torch.randn(shape)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), conv(x), **TOL)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_conv_inputs_in_any_memory_layout(path, layout):
    conv = pruned(nn.Conv2d(64, 24, 3, stride=2, padding=1), 0.9)
    sparse = BankSparseConv.from_conv(conv)
    x = torch.randn(3, 64, 9, 11)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(3, 128, 9, 22)[:, ::2, :, ::2]  # a view with strides of its own
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), conv(x), **TOL)
        pointwise = pruned(nn.Conv2d(64, 16, 1), 0.9)
        torch.testing.assert_close(BankSparseConv.from_conv(pointwise)(x), pointwise(x), **TOL)


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_resnet_like_convs_at_batch_sizes(path, batch):
    for conv, hw in [
        (nn.Conv2d(64, 64, 3, padding=1), 14),
        (nn.Conv2d(128, 128, 3, 2, 1), 15),
        (nn.Conv2d(256, 64, 1), 7),
    ]:
        conv = pruned(conv, 0.9375)
        x = torch.randn(batch, conv.in_channels, hw, hw)
        with torch.no_grad():
            torch.testing.assert_close(BankSparseConv.from_conv(conv)(x), conv(x), **TOL)


def test_kernel_path_is_taken_and_equals_fallback(path):
    fc = pruned_linear(128, 640, 0.9375)
    sparse = BankSparseLinear.from_linear(fc)
    x = torch.randn(3, 5, 640)  # leading dims are kept
    with torch.no_grad():
        y = sparse(x)
    assert y.shape == (3, 5, 128)
    assert (_native.library("bank_sparse") is not None) == (path == "native")
    b = sparse._buffers
    expected = reference.linear(x.reshape(-1, 640), b["values"], b["indices"], b["tail_values"], b["tail_indices"],
                                b["bias"], 64)  # fmt: skip
    torch.testing.assert_close(y, expected.reshape(3, 5, 128), **TOL)


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_shared_work_with_a_fixed_team():
    """Products large enough for an OpenMP team (the default may pick one thread on a busy machine)."""
    fc = pruned_linear(512, 1000, 0.9)  # 512 rows x 15 banks x 6 (+ tail 40 keeps 4)
    conv = pruned(nn.Conv2d(100, 96, 3, padding=1), 0.9)
    sparse, sparse_conv = BankSparseLinear.from_linear(fc), BankSparseConv.from_conv(conv)
    threads = torch.get_num_threads()
    try:
        with _native.use_engine("native"):
            for team in (2, 3):
                _native.set_threads(team)
                with torch.no_grad():
                    for batch in (1, 5, 64, 70):
                        x = torch.randn(batch, 1000)
                        torch.testing.assert_close(sparse(x), F.linear(x, fc.weight, fc.bias), **TOL)
                    x = torch.randn(2, 100, 17, 9)
                    torch.testing.assert_close(sparse_conv(x), conv(x), **TOL)
    finally:
        _native.set_threads(0)
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="n=-1"):
        _native.set_threads(-1)


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_any_team_computes_the_same_bits():
    """Threads that finish their share take work items from the others' (a team larger than the cores
    makes them): every item computes the same numbers whichever thread takes it."""
    fc = pruned_linear(512, 1000, 0.9)
    sparse = BankSparseLinear.from_linear(fc)
    conv = pruned(nn.Conv2d(64, 96, 3, padding=1), 0.9)
    sparse_conv = BankSparseConv.from_conv(conv)
    pointwise = BankSparseConv.from_conv(pruned(nn.Conv2d(128, 160, 1), 0.9))
    inputs = [(sparse, torch.randn(n, 1000)) for n in (5, 70, 200)]
    image = torch.randn(2, 64, 23, 19)
    inputs += [(sparse_conv, image), (sparse_conv, image.contiguous(memory_format=torch.channels_last))]
    inputs += [(pointwise, torch.randn(1, 128, 28, 28))]
    try:
        with _native.use_engine("native"), torch.no_grad():
            _native.set_threads(1)
            alone = [module(x) for module, x in inputs]
            for team in (2, 5, 8):
                _native.set_threads(team)
                for _ in range(3):
                    for (module, x), want in zip(inputs, alone, strict=True):
                        assert torch.equal(module(x), want), (team, tuple(x.shape))
    finally:
        _native.set_threads(0)


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_the_team_follows_the_thread_count_at_once():
    """The team size is cached for 50 ms; a new ``torch.set_num_threads`` applies to the very next product."""
    lib = _native.library("bank_sparse")
    threads = torch.get_num_threads()
    try:
        for _ in range(3):
            torch.set_num_threads(2)
            assert lib.bank_team_size() in (1, 2)  # 1 where other processes keep the cores busy
            torch.set_num_threads(1)
            assert lib.bank_team_size() == 1
    finally:
        torch.set_num_threads(threads)


def test_gradients_through_input_and_other_dtypes(path):
    fc = pruned_linear(32, 128, 0.9).double()
    sparse = BankSparseLinear.from_linear(fc)
    x = torch.randn(4, 128, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    sparse(x).pow(2).sum().backward()
    F.linear(x_ref, fc.weight, fc.bias).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    conv = pruned(nn.Conv2d(64, 16, 3, stride=2, padding=(1, 2)), 0.9)
    sparse_conv = BankSparseConv.from_conv(conv)
    x = torch.randn(2, 64, 9, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    sparse_conv(x).pow(2).sum().backward()
    conv(x_ref).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, **TOL)


def test_empty_batch(path):
    sparse = BankSparseLinear.from_linear(pruned_linear(8, 64, 0.5))
    assert sparse(torch.randn(0, 64)).shape == (0, 8)
    conv = BankSparseConv.from_conv(pruned(nn.Conv2d(64, 8, 3, padding=1), 0.5))
    assert conv(torch.randn(0, 64, 5, 5)).shape == (0, 8, 5, 5)


def small_model() -> nn.Sequential:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 128, 1, stride=2),
        nn.Flatten(),
        nn.Linear(128 * 16, 200),
    )
    for m in (model[0], model[2], model[4]):
        with torch.no_grad():
            m.weight.mul_(bank_mask(m.weight, None, 0.9375))
    return model


def sparse_copy(model: nn.Sequential) -> nn.Sequential:
    out = copy.deepcopy(model)
    out[0] = BankSparseConv.from_conv(out[0])
    out[2] = BankSparseConv.from_conv(out[2])
    out[4] = BankSparseLinear.from_linear(out[4])
    return out.eval()


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_compile_trace_export_without_graph_breaks(path):
    model = small_model().eval()
    sparse = sparse_copy(model)
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(sparse(x), expected, **TOL)
        torch._dynamo.reset()
        compiled = torch.compile(sparse, fullgraph=True)  # fullgraph: a graph break is an error
        torch.testing.assert_close(compiled(x), expected, **TOL)
        traced = torch.jit.trace(sparse, x)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        torch.testing.assert_close(torch.jit.load(buffer)(x), expected, **TOL)
    program = torch.export.export(sparse, (x,))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"pruning_tools.bank_conv2d.default", "pruning_tools.bank_linear.default"} <= ops
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), expected, **TOL)


def test_compile_in_training_mode_with_gradients(path):
    model = small_model()
    sparse = sparse_copy(model).train()
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    torch._dynamo.reset()
    torch.compile(sparse, fullgraph=True)(x).sum().backward()
    model(x_ref).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, **TOL)


def test_deepcopy_and_state_dict_into_a_freshly_converted_model(path, tmp_path):
    model = small_model()
    sparse = sparse_copy(model)
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        expected = sparse(x)  # the first call builds the kernel descriptors
        torch.testing.assert_close(copy.deepcopy(sparse)(x), expected)
    torch.save(sparse.state_dict(), tmp_path / "sparse.pt")
    assert {"0.values", "0.indices", "0.tail_values", "0.tail_indices", "0.bias"} <= set(sparse.state_dict())
    other = small_model()  # same architecture and pruning, other weights
    with torch.no_grad():
        for m in other:
            if hasattr(m, "weight"):
                m.weight.mul_(-2.0)
    fresh = sparse_copy(other)
    with torch.no_grad():
        fresh(x)  # descriptors of the old buffers: must be rebuilt after loading
        fresh.load_state_dict(torch.load(tmp_path / "sparse.pt", weights_only=True))
        torch.testing.assert_close(fresh(x), expected)
        fresh.load_state_dict(torch.load(tmp_path / "sparse.pt", weights_only=True), assign=True)
        torch.testing.assert_close(fresh(x), expected)


def test_buffers_changed_in_place_are_checked_again(path):
    sparse = BankSparseLinear.from_linear(pruned_linear(16, 128, 0.9375))
    x = torch.randn(3, 128)
    with torch.no_grad():
        sparse(x)
        sparse.indices[0, 0, 0] = 200  # an index past its bank of 64
        with pytest.raises(ValueError, match=r"indices holds 200"):
            sparse(x)


def test_module_state_from_file_and_to_device_dtype(path, tmp_path):
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(64, 64, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 4, 100), nn.ReLU(), nn.Linear(100, 10)
    )
    with torch.no_grad():
        for m in (model[0], model[3]):
            m.weight.mul_(bank_mask(m.weight, None, 0.9375))
    save_packed(model.state_dict(), tmp_path / "m.safetensors", bank_size=64)
    from_file = BankSparseLinear.from_file(tmp_path / "m.safetensors", "3")
    conv = BankSparseConv.from_file(tmp_path / "m.safetensors", "0")
    h = torch.randn(5, 64 * 4)
    x = torch.randn(5, 64, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(from_file(h), model[3](h), **TOL)
        torch.testing.assert_close(conv(x), model[0](x), **TOL)
        torch.testing.assert_close(from_file.double()(h.double()), model[3].double()(h.double()), **TOL)
    with pytest.raises(KeyError, match="'5'"):
        BankSparseLinear.from_file(tmp_path / "m.safetensors", "5")  # dense layer: not packed


def test_transposed_conv1d_weight(path):
    layer = Conv1D(96, 256)
    with torch.no_grad():
        layer.weight.mul_(bank_mask(layer.weight, None, 0.9375, 64, out_dim=1))  # banks along the input dim
    sparse = BankSparseLinear.from_linear(layer)
    assert (sparse.in_features, sparse.out_features) == (256, 96)
    x = torch.randn(2, 7, 256)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), layer(x), **TOL)


def test_bad_inputs_are_named():
    fc = pruned_linear(8, 64, 0.5)
    sparse = BankSparseLinear.from_linear(fc)
    with pytest.raises(ValueError, match=r"expected \[\.\.\., 64\]"):
        sparse(torch.randn(2, 65))
    with pytest.raises(TypeError, match="linear=Conv2d"):
        BankSparseLinear.from_linear(nn.Conv2d(4, 4, 1))
    with pytest.raises(ValueError, match="bias of shape"):
        BankSparseLinear(sparse.packed(), torch.zeros(3))
    with pytest.raises(ValueError, match="grouped"):
        BankSparseConv.from_conv(nn.Conv2d(8, 8, 3, groups=2))
    with pytest.raises(ValueError, match="transposed"):
        BankSparseConv.from_conv(nn.ConvTranspose2d(8, 8, 3))
    conv = BankSparseConv.from_conv(pruned(nn.Conv2d(64, 8, 3), 0.5))
    with pytest.raises(ValueError, match=r"expected \[N, 64, 2 spatial dims\]"):
        conv(torch.randn(1, 32, 5, 5))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv(torch.randn(1, 64, 2, 2))
    dense_random = nn.Linear(128, 16)
    with torch.no_grad():
        dense_random.weight.mul_(dense_random.weight.abs() > 0.07)  # unstructured zeros
    with pytest.raises(NotBankBalancedError, match="weight"):
        BankSparseLinear.from_linear(dense_random)


@settings(max_examples=25, deadline=None)
@given(
    out_f=st.integers(1, 40),
    in_f=st.integers(1, 300),
    bank_size=st.sampled_from([4, 8, 16, 64, 128]),
    sparsity=st.sampled_from([0.25, 0.5, 0.75, 0.9, 0.95]),
    batch=st.integers(1, 70),
    seed=st.integers(0, 999),
)
def test_random_layers_equal_masked_dense(out_f, in_f, bank_size, sparsity, batch, seed):
    fc = pruned_linear(out_f, in_f, sparsity, bank_size, bias=seed % 2 == 0, seed=seed)
    sparse = BankSparseLinear.from_linear(fc, bank_size)
    x = torch.randn(batch, in_f)
    with torch.no_grad():
        expected = F.linear(x, fc.weight, fc.bias)
        for level in _native.isa.supported():  # the C kernel of every level, where it builds
            with _native.use_isa(level):
                torch.testing.assert_close(sparse(x), expected, **TOL)
        with _native.use_engine("torch"):
            torch.testing.assert_close(sparse(x), expected, **TOL)  # fallback


@settings(max_examples=30, deadline=None)
@given(
    cin=st.integers(1, 150),
    cout=st.integers(1, 20),
    k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    hw=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    batch=st.integers(1, 3),
    bank_size=st.sampled_from([4, 16, 64]),
    seed=st.integers(0, 999),
)
def test_random_convs_equal_masked_dense(cin, cout, k, stride, padding, dilation, hw, batch, bank_size, seed):
    span = [d * (kk - 1) + 1 for kk, d in zip(k, dilation)]
    hw = tuple(max(h, s - 2 * p) for h, s, p in zip(hw, span, padding))  # at least one output position
    conv = pruned(nn.Conv2d(cin, cout, k, stride, padding, dilation, bias=seed % 2 == 0), 0.75, bank_size, seed)
    sparse = BankSparseConv.from_conv(conv, bank_size)
    x = torch.randn(batch, cin, *hw)
    with torch.no_grad():
        expected = conv(x)
        for level in _native.isa.supported():
            with _native.use_isa(level):
                torch.testing.assert_close(sparse(x), expected, **TOL)
        with _native.use_engine("torch"):
            torch.testing.assert_close(sparse(x), expected, **TOL)


def test_the_pruners_spec_or_a_target_sets_the_packed_budget_else_the_measured_sparsity_does():
    from pruning_tools.config import ParamSpec

    fc = pruned_linear(8, 16, 0.75, bank_size=4)  # 1 of 4 kept per bank
    assert BankSparseLinear.from_linear(fc, 4).packed().k == 1  # measured budget
    assert BankSparseLinear.from_linear(fc, 4, sparsity=0.5).packed().k == 2  # the target's budget: 2 slots
    spec = ParamSpec(0.5, "fix", 4, "channels_last", 0, (8, 16))
    sparse = BankSparseLinear.from_linear(fc, spec)
    assert (sparse.packed().k, sparse.packed().geometry) == (2, spec.geometry)
    x = torch.randn(3, 16)
    torch.testing.assert_close(sparse(x), fc(x), **TOL)
    with pytest.raises(ValueError, match="expected a bank-balanced weight"):
        BankSparseLinear.from_linear(fc, ParamSpec(0.5, "none", 4, "channels_last"))
