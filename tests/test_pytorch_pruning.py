import copy
import pickle
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import pruning_tools
from pruning_tools import geometry as G
from pruning_tools import masks as M
from pruning_tools import pytorch_pruning
from pruning_tools.pytorch_pruning import Prune


class Net(nn.Module):
    """Small CNN with a conv, a transposed conv, a 1x1 conv and a linear layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 70, 3, padding=1)
        self.up = nn.ConvTranspose2d(70, 8, 2, stride=2)
        self.point = nn.Conv2d(8, 130, 1)
        self.fc = nn.Linear(130, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.relu(self.up(x))
        x = torch.relu(self.point(x)).mean(dim=(2, 3))
        return self.fc(x)


def make_net(seed=0):
    torch.manual_seed(seed)
    return Net()


def train(model, prune, steps, seed=0, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 10, (4,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        prune.prune()
    return opt


WEIGHTS = {"conv.weight": 0.9, "up.weight": 0.5, "point.weight": 0.75, "fc.weight": 0.9}


def quiet_prune(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Prune(*args, **kwargs)


def test_positional_call_and_package_export():
    assert pruning_tools.Prune is pytorch_pruning.Prune
    model = make_net()
    prune = quiet_prune(model, 2, 8, 3, dict(WEIGHTS))
    train(model, prune, 12)
    layers, total = prune.sparsity()
    assert set(layers) == set(WEIGHTS)
    ok, all_ok = prune.check()
    assert all_ok and all(ok.values())
    # exact bank budgets at the final target
    assert layers["fc.weight"] == pytest.approx(1 - 13 / 130)  # 2 banks keep 6, the tail of 2 keeps 1
    full, tail = M.bank_nonzeros(model.fc.weight, 64)
    assert bool((full <= 6).all()) and bool((tail <= 1).all())


def test_schedule_refreshes_only_on_refresh_steps_and_reaches_final_target():
    model = make_net()
    prune = quiet_prune(model, 3, 10, 4, {"fc.weight": 0.9}, balance="none")
    seen = []
    g = torch.Generator().manual_seed(0)
    for t in range(1, 16):
        with torch.no_grad():
            model.fc.weight.add_(torch.randn(model.fc.weight.shape, generator=g) * 0.01)
        before = prune.masks()["fc.weight"].clone()
        prune.prune()
        if not torch.equal(before, prune.masks()["fc.weight"]):
            seen.append(t)
    assert seen == [7, 11, 13]  # (t - 3) % 4 == 0, and the last step 13
    assert prune.sparsity()[0]["fc.weight"] == pytest.approx(0.9)


def test_masks_reapplied_every_step_against_momentum():
    model = make_net()
    prune = quiet_prune(model, 0, 0, 1, {"fc.weight": 0.9})
    train(model, prune, 1)
    mask = prune.masks()["fc.weight"].clone()
    train(model, prune, 5, seed=1, lr=0.5)  # momentum and weight decay push pruned weights
    assert torch.equal(prune.masks()["fc.weight"], mask)
    assert bool((model.fc.weight[~mask] == 0).all())


def test_one_shot_at_first_step_after_pretrain():
    model = make_net()
    prune = quiet_prune(model, 2, 0, 100, {"fc.weight": 0.5}, balance="none")
    prune.prune()
    prune.prune()
    assert prune.sparsity()[1] == 0.0
    prune.prune()
    assert prune.sparsity()[1] == pytest.approx(0.5)


def test_restore_sparsity_starts_from_measured_zeros():
    model = make_net()
    with torch.no_grad():
        model.fc.weight[:, :65] = 0  # half the weights are already zero
    prune = quiet_prune(model, 0, 10, 5, {"fc.weight": 0.9}, restore_sparsity=True, balance="none")
    measured = 650 / 1300
    assert prune.target("fc.weight", 0) == pytest.approx(measured)
    assert prune.target("fc.weight", 5) == pytest.approx(0.9 + (measured - 0.9) * 0.5**3)
    train(model, prune, 1)
    assert bool((model.fc.weight[:, :65] == 0).all())  # the existing zeros are masks from step 1
    train(model, prune, 9)
    assert prune.sparsity()[0]["fc.weight"] == pytest.approx(0.9)


def test_fix_sparsity_keeps_existing_zeros_forever():
    model = make_net()
    with torch.no_grad():
        model.conv.weight[model.conv.weight.abs() < 0.1] = 0
    zeros = model.conv.weight == 0
    prune = quiet_prune(model, 0, 4, 1, {"conv.weight": 0.99}, fix_sparsity=True)
    train(model, prune, 8)
    assert torch.equal(model.conv.weight == 0, zeros)
    assert torch.equal(prune.masks()["conv.weight"], ~zeros)


def test_global_mode_meets_overall_target_with_one_threshold():
    model = make_net()
    targets = {"conv.weight": 0.8, "fc.weight": 0.8, "point.weight": 0.8}
    prune = quiet_prune(model, 0, 0, 1, targets, balance="global")
    prune.prune()
    n = sum(p.numel() for name, p in model.named_parameters() if name in targets)
    zeros = sum(int((p == 0).sum()) for name, p in model.named_parameters() if name in targets)
    assert zeros == n - G.keep_count(n, 0.8)
    assert prune.check()[1]


def test_prune_device_cpu_keeps_masks_on_cpu():
    model = make_net()
    prune = quiet_prune(model, 0, 0, 1, {"fc.weight": 0.9}, prune_device="cpu")
    train(model, prune, 2)
    assert prune.masks()["fc.weight"].device.type == "cpu"
    assert prune.check()[1]


def test_one_dim_parameter_falls_back_to_unstructured():
    model = make_net()
    prune = quiet_prune(model, 0, 0, 1, {"point.bias": 0.5})
    prune.prune()
    assert int((model.point.bias == 0).sum()) == 65


def test_unreachable_target_warns_once_with_realised_value():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3, groups=8))  # depthwise: rows of length 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prune = Prune(model, 0, 0, 1, {"1.weight": 0.9})
        prune.prune()
        prune.prune()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "1.weight" in messages[0] and "0.0000" in messages[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Prune(model, 0, 0, 1, {"1.weight": 0.9}, layout="flat")  # reachable: no warning


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters(dtype):
    model = make_net().to(dtype)
    prune = quiet_prune(model, 0, 0, 1, dict(WEIGHTS))
    prune.prune()
    assert prune.check()[1]
    assert prune.sparsity()[0]["fc.weight"] > 0.85


def test_masks_are_one_byte_or_less_per_weight_and_no_weight_copies():
    model = make_net()
    prune = quiet_prune(model, 0, 0, 1, dict(WEIGHTS))
    prune.prune()
    for mask in prune._masks.values():
        assert mask.dtype == torch.bool and mask.element_size() == 1
    assert all(isinstance(v, (torch.Tensor, type(None))) for v in prune._masks.values())


def test_model_stays_vanilla():
    model = make_net()
    keys = list(model.state_dict())
    prune = quiet_prune(model, 0, 0, 1, dict(WEIGHTS))
    train(model, prune, 2)
    assert list(model.state_dict()) == keys
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    fresh = Net()
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(fresh(x), model(x))
    assert torch.equal(copy.deepcopy(model)(x), model(x))
    assert torch.equal(pickle.loads(pickle.dumps(model))(x), model(x))
    compiled = torch.compile(model, backend="aot_eager")
    assert torch.allclose(compiled(x), model(x), atol=1e-6)
    train(model, prune, 1)  # pruning continues on the original model after compile


def test_state_dict_is_plain_and_loads_weights_only(tmp_path):
    model = make_net()
    prune = quiet_prune(model, 1, 6, 2, dict(WEIGHTS))
    train(model, prune, 5)
    torch.save(prune.state_dict(), tmp_path / "pruner.pt")
    state = torch.load(tmp_path / "pruner.pt", weights_only=True)
    other = quiet_prune(model, 1, 6, 2, dict(WEIGHTS))
    other.load_state_dict(state)
    assert other.step == 5
    for name, mask in prune.masks().items():
        assert torch.equal(other.masks()[name], mask)
    with pytest.raises(ValueError, match="different settings"):
        quiet_prune(model, 1, 6, 3, dict(WEIGHTS)).load_state_dict(state)
    with pytest.raises(ValueError, match="not a pruner state"):
        other.load_state_dict({"step": 3})


RESUME_SCRIPT = textwrap.dedent("""
    import sys, warnings, torch
    sys.path.insert(0, {tests!r})
    from test_pytorch_pruning import make_net, train, WEIGHTS
    from pruning_tools import Prune
    warnings.simplefilter("ignore")
    torch.set_num_threads({threads})  # same arithmetic order as the parent process
    model = make_net()
    prune = Prune(model, 2, 12, 3, dict(WEIGHTS))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    ckpt = torch.load({ckpt!r}, weights_only=True)
    model.load_state_dict(ckpt["model"]); opt.load_state_dict(ckpt["optimizer"]); prune.load_state_dict(ckpt["pruner"])
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        x, y = torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 10, (4,), generator=g)
        opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step(); prune.prune()
    torch.save({{"model": model.state_dict(), "masks": prune.masks()}}, {out!r})
""")


def test_resume_in_fresh_process_is_bit_identical(tmp_path):
    def continue_run(model, prune, opt):
        g = torch.Generator().manual_seed(1)
        for _ in range(10):
            x, y = torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 10, (4,), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            prune.prune()

    model = make_net()
    prune = quiet_prune(model, 2, 12, 3, dict(WEIGHTS))
    opt = train(model, prune, 6)
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "pruner": prune.state_dict()}, tmp_path / "ckpt.pt"
    )
    continue_run(model, prune, opt)  # the uninterrupted run

    script = RESUME_SCRIPT.format(
        threads=torch.get_num_threads(),
        tests=str(__import__("pathlib").Path(__file__).parent),
        ckpt=str(tmp_path / "ckpt.pt"),
        out=str(tmp_path / "resumed.pt"),
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(resumed["model"][name], value), name
    for name, mask in prune.masks().items():
        assert torch.equal(resumed["masks"][name], mask), name


def test_bad_model_and_non_float_parameter():
    with pytest.raises(TypeError, match="model=dict .*torch.nn.Module"):
        Prune({}, 0, 0, 1, {"w": 0.5})
    model = nn.Linear(3, 3)
    model.register_parameter("steps", nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False))
    with pytest.raises(TypeError, match="'steps'.*torch.int64.*floating-point"):
        Prune(model, 0, 0, 1, {"steps": 0.5})
    with pytest.raises(ValueError, match="'wieght'.*closest names"):
        Prune(model, 0, 0, 1, {"wieght": 0.5})
    with pytest.raises(ValueError, match="frequency"):
        Prune(model, 0, 0, 0, {"weight": 0.5})


def test_prepare_is_harmless():
    model = make_net()
    prune = quiet_prune(model, 0, 0, 1, dict(WEIGHTS))
    assert prune.prepare() is prune
    prune.prune()
    prune.prepare()
    assert prune.check()[1]


@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_pruned_weights_become_positive_zero_even_when_not_finite(kernel):
    from pruning_tools import _native

    with _native.use_engine(kernel):
        w = torch.tensor([[-3.0, -0.5, 2.0, -0.1]])
        M.apply_mask_(w, torch.tensor([[True, False, True, False]]))
        assert torch.equal(w.signbit(), torch.tensor([[True, False, False, False]]))
        w = torch.tensor([[5.0, float("nan"), float("-inf"), 1.0]])
        M.apply_mask_(w, torch.tensor([[True, False, False, True]]))
        assert w.tolist() == [[5.0, 0.0, 0.0, 1.0]]


def test_save_and_load_resume_bit_identically(tmp_path):
    """``save``/``load``: the pickle-free safetensors state file, as in MXNet."""
    model = make_net()
    prune = quiet_prune(model, 2, 12, 3, dict(WEIGHTS))
    opt = train(model, prune, 6)
    prune.save(tmp_path / "state.safetensors")
    again = quiet_prune(model, 2, 12, 3, dict(WEIGHTS))
    again.load(tmp_path / "state.safetensors")
    assert again.step == prune.step == 6
    for name, mask in prune.masks().items():
        assert torch.equal(again.masks()[name], mask), name
    assert again.state_dict()["mask_targets"] == prune.state_dict()["mask_targets"]
    torch.save(prune.state_dict(), tmp_path / "state.pt")  # the older way still reads
    again.load(tmp_path / "state.pt")
    assert again.step == 6
    del opt


def test_bank_sparse_conversion_takes_the_geometry_from_the_pruner(tmp_path):
    from pruning_tools.inference import BankSparseLinear, to_bank_sparse
    from pruning_tools.pruner import pruned_specs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    prune = Prune(model, 0, 0, 1, {"0.weight": 0.75, "2.weight": {"sparsity": 0.5, "balance": "none"}}, bank_size=16)
    prune.prune()
    prune.save(tmp_path / "state.safetensors")
    x = torch.randn(4, 64)
    with torch.no_grad():
        expected = model(x)
        layer = BankSparseLinear.from_linear(model[0], pruned_specs(prune)["0.weight"])
        assert layer.bank_size == 16 and layer.values.shape[-1] == 4  # 4 of every 16 kept
        for source in (prune.state_dict(), tmp_path / "state.safetensors"):  # a Prune holds model's own tensors
            converted = copy.deepcopy(model)
            report = to_bank_sparse(converted, source, min_speedup=1e-9, min_weights=0)  # convert whatever is banked
            assert report.converted == ["0"] and "unstructured" in report.layers[1].reason
            torch.testing.assert_close(converted(x), expected, rtol=1e-5, atol=1e-5)
        report = to_bank_sparse(model, prune, min_speedup=1e-9, min_weights=0)
        assert report.converted == ["0"] and isinstance(model[0], BankSparseLinear)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="pruner=int"):
        to_bank_sparse(model, 16)


def test_an_empty_parameter_prunes_to_nothing_and_says_so():
    """``[0, 4]`` raised ZeroDivisionError at construction; now it is pruned to nothing, every way."""
    model = nn.Module()
    model.empty = nn.Parameter(torch.zeros(0, 4))
    model.w = nn.Parameter(torch.randn(4, 64))
    for balance in ("fix", "none", "global"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prune = Prune(model, 0, 0, 1, {"empty": 0.5, "w": 0.5}, balance=balance)
        assert [str(w.message) for w in caught] == ["empty [0, 4] has no elements: nothing to prune"], balance
        prune.prune()
        layers, total = prune.sparsity()
        assert layers == {"empty": 0.0, "w": 0.5} and total == 0.5 and prune.check()[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dense target on an empty parameter: nothing to say
        Prune(model, 0, 0, 1, {"empty": 0.0})


def test_buffers_are_refused_by_name_and_never_matched():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    with pytest.raises(ValueError, match=r"'1.running_mean' names a buffer .* not a parameter"):
        Prune(model, 0, 0, 1, {"1.running_mean": 0.5}, balance="none")
    prune = Prune(model, 0, 0, 1, {"1.*": 0.5}, balance="none")  # the gain and bias, not the statistics
    assert list(prune.config.params) == ["1.weight", "1.bias"]


def test_check_names_its_parts_and_still_unpacks():
    model = nn.Sequential(nn.Linear(64, 8))
    prune = Prune(model, 0, 0, 1, {"0.weight": 0.5})
    prune.prune()
    result = prune.check()
    per_parameter, ok = result
    assert result.per_parameter == per_parameter == {"0.weight": True} and result.ok is ok is True and bool(result)
    with torch.no_grad():
        model[0].weight.fill_(1.0)  # every bank full: over its budget
    assert not prune.check() and prune.check().per_parameter == {"0.weight": False}
