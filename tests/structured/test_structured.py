"""Prune(structure="channel") and shrink: schedule, masks on every member, state, files, bad input."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pruning_tools import Prune, load_shrunk, save_shrunk, shrink
from pruning_tools.integrity import IntegrityError
from pruning_tools.structured import groups as G
from tests.structured.test_models import rel_err


class ConvNet(nn.Module):
    """conv(3->16)-BN-ReLU -> conv(16->16) + residual -> conv(16->8) -> flatten -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: Tensor) -> Tensor:  # [N, 3, 4, 4]
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)) + h)
        return self.fc(self.conv3(h).flatten(1))


def inputs() -> tuple[Tensor]:
    return (torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)),)


def make(model: nn.Module | None = None, prune_dict: dict | None = None, **kwargs) -> tuple[nn.Module, Prune]:
    torch.manual_seed(0)
    model = model or ConvNet()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="structure='channel': the output channels")
        sparse_step = kwargs.pop("sparse_step", 0)
        options = {"structure": "channel", "example_inputs": inputs(), **kwargs}
        prune = Prune(model, 0, sparse_step, 1, prune_dict or {"*": 0.5}, **options)
    return model, prune


# ------------------------------------------------------------------ groups and masks


def test_groups_couple_residual_bn_and_flatten() -> None:
    _, prune = make()
    by_producer = {g.producers: g for g in prune.plan.groups}
    residual = by_producer[("conv1.weight", "conv2.weight")]  # the add couples both producers
    assert residual.units == 16
    names = set(residual.members())
    assert {"bn1.weight", "bn1.bias", "bn2.weight", "conv1.bias", "conv3.weight", "bn1.running_mean"} <= names
    flat = by_producer[("conv3.weight",)]
    assert flat.width("conv3.weight") == 1 and len(flat.slices[("fc.weight", 1)][0]) == 16  # 4x4 positions a channel


def test_every_member_is_masked_and_check_passes() -> None:
    model, prune = make()
    prune.prune()
    (g, gone), *_ = [(g, r) for g, r in zip(prune.plan.groups, prune.removed_units()) if r]
    assert len(gone) == g.units // 2
    params = dict(model.named_parameters())
    for (name, dim), idx in g.slices.items():
        if name in params:
            rows = torch.tensor([i for u in gone for i in idx[u]])
            assert not params[name].detach().index_select(dim, rows).any(), name
    assert prune.check()[1]
    assert set(prune.channel_sparsity().values()) == {0.5}
    layers, total = prune.sparsity()
    assert 0 < total < 1 and layers["conv1.bias"] == 0.5


def test_gradual_schedule_and_frequency() -> None:
    model, prune = make(sparse_step=4)
    fractions = []
    for _ in range(5):
        prune.prune()
        fractions.append(prune.channel_sparsity()["conv3.weight"])
    assert fractions == sorted(fractions) and fractions[0] < 0.5 and fractions[-1] == 0.5


def test_round_to_keeps_multiples() -> None:
    _, prune = make(prune_dict={"conv1.weight": 0.7}, round_to=8)
    prune.prune()
    (g,) = prune.plan.groups
    assert g.units - len(prune.removed_units()[0]) == 8  # 16 - round(11.2) = 5, rounded up to 8
    assert G.kept_units(64, 0.5, 64, 1) == 64 and G.kept_units(12, 0.5, 8, 4) == 6  # heads of 4: 2 units per 8


def test_tracing_leaves_the_model_bit_identical() -> None:
    torch.manual_seed(0)
    model = ConvNet().train()
    model.bn1.running_mean.uniform_()
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Prune(model, 0, 0, 1, {"*": 0.5}, structure="channel", example_inputs=inputs())
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_tied_weights_shrink_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.fc1, self.fc2 = nn.Embedding(20, 8), nn.Linear(8, 16), nn.Linear(16, 8)
            self.head = nn.Linear(8, 20, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids: Tensor) -> Tensor:
            return self.head(self.fc2(F.relu(self.fc1(self.emb(ids)))))

    torch.manual_seed(0)
    model, ids = Tied().eval(), torch.randint(0, 20, (2, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune = Prune(model, 0, 0, 1, {"*": 0.5}, structure="channel", example_inputs=(ids,))
    prune.prune()
    masked = model(ids).detach()
    shrink(model, prune)
    assert model.head.weight is model.emb.weight and model.emb.weight.shape == (20, 4)
    assert rel_err(model(ids), masked) <= 1e-4


def test_movement_criterion_removes_channels() -> None:
    model, prune = make(criterion="movement")
    model(*inputs()).pow(2).mean().backward()
    prune.prune()
    assert prune.channel_sparsity()["conv3.weight"] == 0.5


# ------------------------------------------------------------------ state, shrink from a state, files


def test_state_round_trip_and_shrink_from_file(tmp_path) -> None:
    model, prune = make(sparse_step=2)
    prune.prune()
    path = tmp_path / "state.safetensors"
    prune.save(path)
    twin = copy.deepcopy(model)
    _, resumed = make(twin, sparse_step=2)
    resumed.load(path)
    assert resumed.removed_units() == prune.removed_units()
    assert resumed.state_dict()["structure"] == prune.state_dict()["structure"]
    expected = model(*inputs()).detach()
    shrink(twin, path)  # from the file: no inputs needed
    shrink(model, prune.state_dict())
    assert torch.equal(twin(*inputs()), model(*inputs()))
    assert rel_err(model(*inputs()), expected) <= 1e-4


def test_pruner_is_spent_after_shrink() -> None:
    model, prune = make()
    prune.prune()
    shrink(model, prune)
    with pytest.raises(RuntimeError, match="was shrunk"):
        prune.prune()


def test_hf_model_shrunk_unevenly_round_trips(tmp_path) -> None:
    from tests.tiny_transformers import tiny_bert

    model = tiny_bert(seed=0).eval()
    ids = torch.randint(0, 100, (2, 8))
    layer = "bert.encoder.layer"
    targets = {f"{layer}.0.intermediate.dense.weight": 0.75, f"{layer}.1.intermediate.dense.weight": 0.25,
               f"{layer}.0.attention.self.query.weight": 0.5}  # fmt: skip
    prune = Prune(model, 0, 0, 1, targets, structure="channel", example_inputs=(ids,))
    prune.prune()
    shrink(model, prune)
    path = tmp_path / "shrunk.safetensors"
    save_shrunk(model, path)
    fresh = tiny_bert(seed=1).eval()
    load_shrunk(fresh, path)
    assert fresh.bert.encoder.layer[0].intermediate.dense.out_features == 32
    assert fresh.bert.encoder.layer[1].intermediate.dense.out_features == 96
    assert fresh.bert.encoder.layer[0].attention.self.num_attention_heads == 1
    assert torch.equal(fresh(ids).logits, model(ids).logits)


def test_llama_config_follows_when_every_layer_agrees() -> None:
    from tests.structured.test_models import prune_and_shrink

    model, *_ = prune_and_shrink("llama_gqa")
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, 1)
    assert model.config.head_dim == 16 and model.config.intermediate_size == 64


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"structure": "channels"}, "structure='channels' is not allowed"),
        ({"structure": "channel", "round_to": 0}, "round_to=0 is not allowed"),
        ({"structure": "channel", "round_to": -8}, "round_to=-8 is not allowed"),
        ({"round_to": 8}, "round_to=8 is not allowed"),
        ({"example_inputs": (torch.zeros(1),)}, "example_inputs=tuple is not allowed"),
        ({"structure": "channel", "example_inputs": [1]}, "example_inputs=list is not allowed"),
    ],
)
def test_bad_options_are_refused(kwargs, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        Prune(ConvNet(), 0, 0, 1, {"*": 0.5}, **kwargs)


def test_target_removing_every_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="remove every one of the 8 units"):
        make(prune_dict={"conv3.weight": 0.99})


def test_coupled_weights_with_different_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="different targets"):
        make(prune_dict={"conv1.weight": 0.5, "conv2.weight": 0.25})


def test_bank_options_are_refused_with_channels() -> None:
    with pytest.raises(ValueError, match="balance, bank_size"):
        make(prune_dict={"conv1.weight": {"sparsity": 0.5, "balance": "fix"}})


def test_untraceable_forward_names_the_layer() -> None:
    class Broken(ConvNet):
        def forward(self, x: Tensor) -> Tensor:
            return self.fc(self.conv3(self.conv1(x)))  # no flatten: fc gets [N, 8, 4, 4]

    with pytest.raises(ValueError, match="tracing the model failed in fc"):
        make(Broken())
    with pytest.raises(ValueError, match="example_inputs=None is not allowed"):
        Prune(ConvNet(), 0, 0, 1, {"*": 0.5}, structure="channel")


def test_unknown_op_is_left_dense_and_reported() -> None:
    class Odd(ConvNet):
        def forward(self, x: Tensor) -> Tensor:
            h = F.relu(self.bn1(self.conv1(x)))
            h = torch.fft.fft(h).real  # an op the tracer does not know: its channels stay
            h = F.relu(self.bn2(self.conv2(h)) + h)
            return self.fc(self.conv3(h).flatten(1))

    with pytest.warns(UserWarning, match="conv1.weight: fft"):
        prune = Prune(Odd(), 0, 0, 1, {"*": 0.5}, structure="channel", example_inputs=inputs())
    assert all("conv1.weight" not in g.producers for g in prune.plan.groups)
    assert any("fft" in why for why in prune.plan.left_dense.values())


def test_shrink_refuses_another_model_and_changes_nothing() -> None:
    model, prune = make()
    prune.prune()
    other = ConvNet()
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="built for another model"):
        shrink(other, prune)
    small = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="no parameter or buffer"):
        shrink(small, prune.state_dict())
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    unstructured = Prune(ConvNet(), 0, 0, 1, {"*.weight": 0.5})
    with pytest.raises(ValueError, match="structure='none' is not allowed"):
        shrink(model, unstructured)


def test_load_shrunk_refuses_other_architecture_and_tampered_file(tmp_path) -> None:
    model, prune = make()
    prune.prune()
    shrink(model, prune)
    path = tmp_path / "m.safetensors"
    save_shrunk(model, path)
    wrong = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="is not the architecture saved"):
        load_shrunk(wrong, path)
    grown = ConvNet()
    grown.conv3 = nn.Conv2d(16, 2, 1)  # 2 filters: fewer than the file's 4
    before = copy.deepcopy(grown.state_dict())
    with pytest.raises(ValueError, match="'conv3.bias' is \\[4\\] in the file and \\[2\\] in the model"):
        load_shrunk(grown, path)
    assert all(torch.equal(before[k], v) for k, v in grown.state_dict().items())
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        load_shrunk(ConvNet(), path)


# ------------------------------------------------------------------ one-shot


@pytest.mark.parametrize("method", ["magnitude", "wanda", "flap"])
def test_oneshot_channels_then_shrink(method: str) -> None:
    from pruning_tools import oneshot

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    calibration = [torch.randn(64, 16) + 1.0 for _ in range(3)]  # a non-zero mean for FLAP to fold in
    dense = model(calibration[0]).detach()
    report = oneshot(model, calibration, {"0.weight": 0.5}, method=method, structure="channel", round_to=4)
    assert report.prune.channel_sparsity() == {"0.weight": 0.5}
    assert (report.compensated == ["2.weight"]) == (method == "flap")
    masked = model(calibration[0]).detach()
    shrink(model, report.prune)
    assert model[0].out_features == 16 and model[2].in_features == 16
    assert rel_err(model(calibration[0]), masked) <= 1e-4
    assert rel_err(masked, dense) < 1.0


def test_oneshot_flap_beats_magnitude_on_shifted_inputs() -> None:
    """Channels with a large constant part and little variance: FLAP removes them and folds their mean
    into the next bias, magnitude keeps them (their weights are large): FLAP's output error is lower."""
    from pruning_tools import oneshot

    def build() -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 8)).eval()
        with torch.no_grad():
            model[0].weight[:16] *= 0.01  # rows 0-15 carry almost nothing but their bias
            model[0].bias[:16] = 5.0
        return model

    x = [torch.randn(128, 16)]
    errors = {}
    for method in ("magnitude", "flap"):
        model = build()
        dense = model(x[0]).detach()
        oneshot(model, x, {"0.weight": 0.5}, method=method, structure="channel")
        errors[method] = rel_err(model(x[0]).detach(), dense)
    assert errors["flap"] < errors["magnitude"]


def test_oneshot_channels_refuses_sparsegpt() -> None:
    from pruning_tools import oneshot

    with pytest.raises(ValueError, match="method='sparsegpt' is not allowed"):
        oneshot(ConvNet(), [inputs()], {"*": 0.5}, method="sparsegpt", structure="channel")


def test_compiled_model_is_refused() -> None:
    compiled = torch.compile(ConvNet())
    with pytest.raises(ValueError, match="before torch.compile"):
        Prune(compiled, 0, 0, 1, {"*": 0.5}, structure="channel", example_inputs=inputs())


def test_shrunk_model_compiles() -> None:
    model, prune = make()
    prune.prune()
    expected = model(*inputs()).detach()
    shrink(model, prune)
    compiled = torch.compile(model, backend="eager")
    assert rel_err(compiled(*inputs()), expected) <= 1e-4


def test_round_to_that_keeps_a_group_whole_says_so() -> None:
    with pytest.warns(UserWarning, match="round_to=32 keeps every one of the 8 units"):
        make(prune_dict={"conv3.weight": 0.5}, round_to=32)


def test_fix_sparsity_keeps_the_removed_units() -> None:
    model, prune = make()
    prune.prune()
    removed = prune.removed_units()
    _, again = make(model, fix_sparsity=True)
    assert again.removed_units() == removed
    again.prune()
    assert again.removed_units() == removed and again.check()[1]
