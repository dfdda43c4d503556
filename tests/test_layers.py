"""Real layers banked along the right axis, and the names users know: each test is a case that once
failed (GPT-2's Conv1D, 2:4 on short rows, ViT's N-D parameters, globs over 1-D parameters,
torch.compile, tied weights, wrapper prefixes)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from pruning_tools import check_banks
from pruning_tools import geometry as G
from pruning_tools.pytorch_pruning import Prune, TorchBridge


def caught_warnings(fn):
    """``(result of fn(), [warning messages])``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught]


def one_shot(model, prune_dict, **options):
    prune, messages = caught_warnings(lambda: Prune(model, 0, 0, 1, prune_dict, **options))
    prune.prune()
    return prune, messages


# ---------------------------------------------------------------- 1. transposed weights


def test_gpt2_conv1d_is_banked_along_its_input_dim():
    from tests.tiny_transformers import tiny_gpt2

    model = tiny_gpt2(hidden=128)  # Conv1D weights [in, out]: c_attn [128, 384], mlp.c_proj [512, 128]
    conv1d = [n for n, p in model.named_parameters() if n.endswith(("c_attn.weight", "c_fc.weight", "c_proj.weight"))]
    prune, _ = one_shot(model, dict.fromkeys(conv1d, 0.9))
    assert {prune.config.params[n].out_dim for n in conv1d} == {1}
    assert prune.check()[1]
    for name in conv1d:
        w = model.get_parameter(name)
        along_inputs = check_banks(w, 64, out_dim=1, sparsity=0.9)
        assert along_inputs.balanced and along_inputs.budget == 6  # 6 of every 64 inputs
        assert not check_banks(w, 64, sparsity=0.9).balanced  # the old, wrong reading along outputs
        # every output column keeps exactly 6 of each 64 consecutive inputs
        per_bank = (w != 0).T.reshape(w.shape[1], -1, 64).sum(dim=-1)
        assert per_bank.eq(6).all()


def test_detecting_conv1d_does_not_import_transformers():
    code = (
        "import sys, torch; from pruning_tools import Prune; "
        "p = Prune(torch.nn.Linear(64, 8), 0, 0, 1, {'weight': 0.5}); p.prune(); "
        "print('transformers' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


class TransposedLinear(nn.Module):
    """A home-made ``y = x @ W`` with ``W`` ``[in, out]``."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_in, n_out))

    def forward(self, x):
        return x @ self.w


def test_per_parameter_out_dim_for_any_transposed_weight():
    torch.manual_seed(0)
    model = TransposedLinear(32, 12)
    prune, _ = one_shot(model, {"w": {"sparsity": 0.5, "out_dim": 1}}, bank_size=4)
    assert prune.config.params["w"].out_dim == 1
    assert (model.w != 0).reshape(8, 4, 12).sum(dim=1).eq(2).all()  # 2:4 along the input dim
    assert check_banks(model.w, 4, out_dim=1, sparsity=0.5).balanced


@pytest.mark.parametrize(
    "value, words",
    [(2, ["out_dim", "2", "0 or 1"]), (True, ["out_dim", "True"]), ("1", ["out_dim", "'1'"])],
)
def test_bad_out_dim_is_refused(value, words):
    with pytest.raises(ValueError) as err:
        Prune(TransposedLinear(8, 4), 0, 0, 1, {"w": {"sparsity": 0.5, "out_dim": value}})
    assert all(word in str(err.value) for word in words)


def test_out_dim_on_a_one_dim_parameter_is_refused():
    with pytest.raises(ValueError, match=r"out_dim.*bias.*< 2 dims"):
        Prune(nn.Linear(8, 4), 0, 0, 1, {"bias": {"sparsity": 0.5, "out_dim": 1}})


# ---------------------------------------------------------------- 2. unreachable targets


class MobileBlock(nn.Module):
    """RGB stem, a depthwise conv (rows of 1 input channel), a 1x1 conv whose rows are 11 long."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3)
        self.depthwise = nn.Conv2d(16, 16, 3, groups=16)
        self.squeeze = nn.Conv2d(16, 11, 1)
        self.point = nn.Conv2d(11, 32, 1)


@pytest.mark.parametrize("sparsity, bank_size", [(0.5, 4), (0.5, 64), (0.9, 64)])
def test_short_rows_warn_at_two_four_as_at_ninety(sparsity, bank_size):
    model = MobileBlock()
    prune_dict = {"stem.weight": sparsity, "depthwise.weight": sparsity}
    _, messages = caught_warnings(lambda: Prune(model, 0, 0, 1, prune_dict, bank_size=bank_size))
    assert len(messages) == 2
    stem, depthwise = messages
    assert "stem.weight" in stem and "rows of 3" in stem
    assert "depthwise.weight" in depthwise and "rows of 1" in depthwise and "0.0000" in depthwise
    if sparsity == 0.5:
        assert "0.3333" in stem  # keeps 2 of 3


def test_an_overshoot_is_not_unreachable():
    model = MobileBlock()  # point: rows of 11 keep 1 at 0.9 (0.9091)
    prune, messages = one_shot(model, {"point.weight": 0.9})
    assert messages == []
    assert prune.sparsity()[0]["point.weight"] == pytest.approx(10 / 11)


def test_unreachable_rule():
    assert G.unreachable((16, 1, 3, 3), "fix", 0.5, G.BankGeometry(4)) == 0.0  # rows of 1: half a bank short
    assert G.unreachable((16, 3, 3, 3), "fix", 0.5, G.BankGeometry(4)) == pytest.approx(1 / 3)
    assert G.unreachable((16, 3, 3, 3), "fix", 0.5, G.BankGeometry(4, "flat")) is None  # rows of 27 keep 14: rounding
    assert G.unreachable((32, 11, 1, 1), "fix", 0.9) is None  # overshoots
    assert G.unreachable((16, 9), "fix", 0.9) is None  # rows of 9 keep 1 (0.889): rounding
    assert G.unreachable((128, 192), "fix", 1 - 16.5 / 64) is None  # full banks: a tie is rounding
    assert G.unreachable((65,), "none", 0.5) is None  # unstructured rounding


# ---------------------------------------------------------------- 3. N-D parameters that are not conv weights


class TinyViT(nn.Module):
    """ViT's parameters: a patch conv, class token [1, 1, D] and position embedding [1, S, D]."""

    def __init__(self, dim: int = 64, tokens: int = 5):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, 4, stride=4)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens, dim))


def test_vit_position_embedding_is_banked_along_the_embedding_dim():
    torch.manual_seed(0)
    model = TinyViT()
    prune, messages = one_shot(model, {"pos_embedding": 0.5, "class_token": 0.5, "conv_proj.weight": 0.5}, bank_size=4)
    specs = prune.config.params
    assert specs["pos_embedding"].layout == specs["class_token"].layout == "last_dim"
    assert specs["conv_proj.weight"].layout == "channels_last"
    assert [m for m in messages if "pos_embedding" in m or "class_token" in m] == []  # rows of 64: reachable
    pos = model.pos_embedding.detach()
    assert (pos != 0).reshape(5, 16, 4).sum(dim=-1).eq(2).all()  # each token's vector: 2 of every 4
    assert (model.class_token != 0).reshape(16, 4).sum(dim=-1).eq(2).all()
    assert check_banks(pos, 4, "last_dim", sparsity=0.5).balanced and prune.check()[1]
    assert G.row_length((1, 5, 64), "last_dim") == 64 and G.row_count((1, 5, 64), "last_dim") == 5


def test_conv_weights_of_third_party_conv_classes_keep_the_conv_layout():
    class DeformConv2d(nn.Module):  # stands for torchvision.ops.DeformConv2d (not a torch.nn conv)
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 4, 3, 3))

    bridge = TorchBridge(nn.ModuleDict({"deform": DeformConv2d(), "vit": TinyViT()}))
    assert bridge.layouts() == {"vit.class_token": "last_dim", "vit.pos_embedding": "last_dim"}


def test_an_explicit_layout_wins():
    prune = Prune(TinyViT(), 0, 0, 1, {"pos_embedding": {"sparsity": 0.5, "layout": "channels_last"}}, bank_size=4)
    assert prune.config.params["pos_embedding"].layout == "channels_last"


# ---------------------------------------------------------------- 4. globs over 1-D parameters


def test_globs_catching_one_dim_parameters_say_so_once():
    from tests.tiny_transformers import tiny_bert

    model = tiny_bert()
    low_dim = [n for n, p in model.named_parameters() if ".attention." in n and p.dim() < 2]
    prune, messages = one_shot(model, {"*.attention.*": 0.9})
    assert len(low_dim) == 12 and len(messages) == 1
    assert f"{len(low_dim)} parameters with fewer than 2 dims" in messages[0]
    assert all(repr(name) in messages[0] for name in low_dim)
    layers = prune.sparsity()[0]
    assert all(layers[name] >= 0.89 for name in low_dim)  # behaviour kept (zero-initialised biases: 1.0)
    # listing them by name is deliberate: no warning; the README's way to leave them out neither
    _, exact = caught_warnings(lambda: Prune(model, 0, 0, 1, dict.fromkeys(low_dim, 0.9)))
    wanted = {n: 0.9 for n, p in model.named_parameters() if ".attention." in n and p.dim() > 1}
    _, filtered = caught_warnings(lambda: Prune(model, 0, 0, 1, wanted))
    assert exact == filtered == []


# ---------------------------------------------------------------- 5. names users know


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def train(model, prune, steps: int = 6, backward=None) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(8, 64, generator=g), torch.randint(0, 10, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        (backward or torch.Tensor.backward)(loss)
        optimizer.step()
        prune.prune()


PRUNE_DICT = {"0.weight": 0.75, "2.weight": 0.5}


def test_torch_compile_takes_the_plain_names():
    reference = mlp()
    prune_ref = Prune(reference, 0, 4, 2, PRUNE_DICT, bank_size=16)
    train(reference, prune_ref)

    model = mlp()
    compiled = torch.compile(model, backend="eager")  # the wrapper, named parameters "_orig_mod.0.weight"
    assert next(iter(dict(compiled.named_parameters()))) == "_orig_mod.0.weight"
    prune = Prune(compiled, 0, 4, 2, PRUNE_DICT, bank_size=16)
    train(compiled, prune)
    assert sorted(prune.masks()) == sorted(PRUNE_DICT)
    assert prune.sparsity()[0] == {"0.weight": 0.75, "2.weight": 0.5} and prune.check()[1]
    for name, mask in prune_ref.masks().items():
        assert torch.equal(prune.masks()[name], mask)
    # the wrapped spelling still works, and means the same parameter
    wrapped = Prune(compiled, 0, 0, 1, {"_orig_mod.0.weight": 0.5}, bank_size=16)
    assert list(wrapped.config.params) == ["0.weight"]


def test_tied_alias_is_the_shared_tensor():
    from tests.tiny_transformers import tiny_gpt2

    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    prune, _ = one_shot(model, {"lm_head.weight": 0.75}, bank_size=16)
    assert list(prune.config.params) == ["transformer.wte.weight"]  # the name named_parameters() reports
    assert check_banks(model.lm_head.weight, 16, sparsity=0.75).balanced
    assert prune.sparsity()[0]["transformer.wte.weight"] == 0.75


def test_ddp_and_accelerate_take_names_without_the_wrapper_prefix(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = DDP(mlp())
        plain = Prune(model, 0, 4, 2, PRUNE_DICT, bank_size=16)  # "0.weight", as Accelerator.prepare users know
        prefixed = Prune(model, 0, 4, 2, {"module.0.weight": 0.75, "module.2.weight": 0.5}, bank_size=16)
        assert list(plain.config.params) == list(prefixed.config.params) == ["module.0.weight", "module.2.weight"]
        globbed, _ = caught_warnings(lambda: Prune(model, 0, 0, 1, {"2.*": 0.5}, bank_size=16))
        assert list(globbed.config.params) == ["module.2.weight", "module.2.bias"]
        train(model, plain)
        assert plain.check()[1] and plain.sparsity()[1] == pytest.approx((0.75 * 8192 + 0.5 * 1280) / 9472)
    finally:
        dist.destroy_process_group()


def test_accelerator_prepared_model():
    accelerate = pytest.importorskip("accelerate")

    reference = mlp()
    prune_ref = Prune(reference, 0, 4, 2, PRUNE_DICT, bank_size=16)
    train(reference, prune_ref)

    accelerator = accelerate.Accelerator(cpu=True)
    model = mlp()
    prepared = accelerator.prepare(model)
    prune = Prune(prepared, 0, 4, 2, PRUNE_DICT, bank_size=16)
    train(prepared, prune, backward=accelerator.backward)
    assert prune.check()[1]
    for name, mask in prune_ref.masks().items():
        assert torch.equal(prune.masks()[name], mask)


def test_unknown_name_lists_close_spellings():
    with pytest.raises(ValueError, match=r"'0.wieght' matches no parameter.*'0.weight'"):
        Prune(torch.compile(mlp(), backend="eager"), 0, 0, 1, {"0.wieght": 0.5})
