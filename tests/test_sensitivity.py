"""Sensitivity sweep, table, suggestion, dumps, plots and the ``sensitivity`` command."""

from __future__ import annotations

import csv
import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from pruning_tools import sensitivity as S
from pruning_tools.cli import main
from pruning_tools.pytorch_pruning import Prune


class TwoBranches(nn.Module):
    """``y = scale_a * a(x) + scale_b * b(x)``: with ``x`` the identity and the score minus the squared
    error against the dense output, pruning branch ``a`` costs ``scale_a ** 2`` times more than
    pruning the same weights in ``b``: the sensitivities are known by construction."""

    def __init__(self, width: int = 128, scale_a: float = 10.0, scale_b: float = 1.0) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(width, 64, bias=False), nn.Linear(width, 64, bias=False)
        with torch.no_grad():
            self.b.weight.copy_(self.a.weight)  # same weights: only the scale differs
        self.scale_a, self.scale_b = scale_a, scale_b

    def forward(self, x):
        return self.scale_a * self.a(x) + self.scale_b * self.b(x)


def error_score(model: nn.Module, x: torch.Tensor):
    dense = model(x).detach()

    @torch.no_grad()
    def score(m):
        return -float(((m(x) - dense) ** 2).sum())

    return score


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 2),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 10),
    )


# ---------------------------------------------------------------- sweep


def test_weights_restored_bit_exactly_and_each_level_really_pruned():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    @torch.no_grad()
    def score(m):
        seen.append({n: float((p == 0).float().mean()) for n, p in m.named_parameters() if p.dim() > 1})
        return float(m.eval()(x).sum())

    table = S.sweep(model, score, levels=[0.5, 0.75], bank_size=4, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # call 0 is the baseline; then one parameter at a time, the others untouched
    assert all(z == 0 for z in seen[0].values())
    calls = iter(seen[1:])
    for name in table.names:
        for level in table.levels:
            zeros = next(calls)
            assert zeros[name] == pytest.approx(table.realised(name, level))
            assert all(z == 0 for other, z in zeros.items() if other != name)


def test_weights_restored_when_evaluate_fails():
    model = small_cnn()
    before = {k: v.clone() for k, v in model.named_parameters()}
    calls = []

    def failing(m):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return 0.0

    with pytest.raises(RuntimeError, match="boom"):
        S.sweep(model, failing, progress=False)
    for k, v in model.named_parameters():
        assert torch.equal(v, before[k]), k


def test_table_shape_default_params_and_snapped_levels():
    model = small_cnn()
    table = S.sweep(model, lambda m: 1.0, levels=[0.5, 0.6, 0.9, 0.98], progress=False)
    assert table.names == ["0.weight", "3.weight", "5.weight"]
    assert table.levels == [0.5, 38 / 64, 58 / 64, 63 / 64]
    assert len(table.scores) == 3 and all(len(row) == 4 for row in table.scores)
    assert table.out_dims == {"3.weight": 1}  # ConvTranspose: output channels on dim 1
    only = S.sweep(model, lambda m: 1.0, params=["5.w*", "0.weight"], levels=[0.5], progress=False)
    assert only.names == ["0.weight", "5.weight"] and len(only.scores) == 2


@pytest.mark.parametrize(
    "balance, bank_size, levels, expected",
    [
        ("fix", 4, [0.3, 0.5, 0.9, 0.99], [0.25, 0.5, 0.75]),  # 2:4 family; at least 1 kept per bank
        ("fix", 64, None, [32 / 64, 38 / 64, 45 / 64, 51 / 64, 58 / 64, 61 / 64, 63 / 64]),
        ("none", 64, [0.9, 0.3, 0.9], [0.3, 0.9]),
    ],
)
def test_snap_levels(balance, bank_size, levels, expected):
    assert S.snap_levels(levels, balance, bank_size) == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"levels": [0.5, 1.0]}, "levels\\[1\\]=1.0"),
        ({"levels": []}, "levels=\\[\\]"),
        ({"balance": "global"}, "balance='global'"),
        ({"bank_size": 1}, "bank_size=1"),
        ({"params": ["nope.weight"]}, "nope.weight"),
    ],
)
def test_sweep_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        S.sweep(small_cnn(), lambda m: 1.0, progress=False, **kwargs)


def test_sweep_rejects_non_numeric_score():
    with pytest.raises(ValueError, match="evaluate\\(model\\) returned 'good'"):
        S.sweep(small_cnn(), lambda m: "good", progress=False)


# ---------------------------------------------------------------- known sensitivities


@pytest.mark.parametrize("balance", ["fix", "none"])
def test_known_sensitivities_monotone_and_ordered(balance):
    torch.manual_seed(1)
    model = TwoBranches()
    table = S.sweep(
        model,
        error_score(model, torch.eye(128)),
        levels=[0.25, 0.5, 0.75, 0.9],
        balance=balance,
        bank_size=16,
        progress=False,
    )
    drop_a, drop_b = table.drops()
    for drops in (drop_a, drop_b):  # more sparsity, never a better score
        assert all(later > earlier >= 0 for earlier, later in zip([0.0, *drops], drops))
    for a, b in zip(drop_a, drop_b):  # same weights, 10x the scale: 100x the squared error
        assert a == pytest.approx(100 * b, rel=1e-4)
    suggestion = S.suggest_prune_dict(table, 0.5)
    assert suggestion["a.weight"] < suggestion["b.weight"]  # the sensitive branch stays denser


def test_suggestion_spends_sparsity_on_the_cheapest_layer_first():
    torch.manual_seed(2)
    model = TwoBranches(scale_a=1.0, scale_b=1.0)
    table = S.sweep(model, error_score(model, torch.eye(128)), levels=[0.5, 0.75], bank_size=16, progress=False)
    table.scores[1] = [table.baseline] * 2  # pretend b costs nothing up to 0.75
    assert S.suggest_prune_dict(table, 0.25) == {"a.weight": 0.0, "b.weight": 0.5}
    assert S.suggest_prune_dict(table, 0.375) == {"a.weight": 0.0, "b.weight": 0.75}


# ---------------------------------------------------------------- the suggestion reaches its target


def _mlp(widths=(192, 128, 64, 256)) -> nn.Module:
    torch.manual_seed(3)
    layers = [nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:])]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("balance, bank_size", [("fix", 64), ("fix", 16), ("none", 64)])
@pytest.mark.parametrize("target", [0.3, 0.62, 0.8, 0.9])
def test_suggestion_meets_overall_target_within_one_step(balance, bank_size, target):
    model = _mlp()
    x = torch.randn(64, 192)
    table = S.sweep(
        model,
        error_score(model, x),
        levels=[0.5, 0.75, 0.9, 0.95],
        balance=balance,
        bank_size=bank_size,
        progress=False,
    )
    suggestion = S.suggest_prune_dict(table, target)
    step = 1 / bank_size if balance == "fix" else 1 / 256
    predicted = S.overall_sparsity(table, suggestion)
    assert target <= predicted <= target + step
    # the pruner, given that prune_dict, measures the same overall sparsity
    Prune(model, 0, 0, 1, suggestion, balance=balance, bank_size=bank_size).prune()
    assert Prune(model, 0, 0, 1, suggestion).sparsity()[1] == pytest.approx(predicted)


@pytest.mark.parametrize("seed", range(4))
def test_suggestion_is_the_best_grid_choice(seed):
    """Against brute force over every grid point of three parameters (bank 16: 17**3 choices)."""
    import itertools

    rng = np.random.default_rng(seed)
    levels = [0.25, 0.5, 0.75, 0.875, 0.9375]
    scores = [list(-np.cumsum(rng.exponential(1.0, len(levels)) * rng.uniform(0.1, 3))) for _ in range(3)]
    shapes = {"a": (32, 64), "b": (64, 128), "c": (16, 32)}
    table = S.SensitivityTable(
        names=list(shapes), levels=levels, scores=scores, baseline=0.0, shapes=shapes, bank_size=16
    )
    grid = [j / 16 for j in range(16)]
    target = float(rng.uniform(0.4, 0.85))
    feasible = []
    for choice in itertools.product(grid, repeat=3):
        prune_dict = dict(zip(shapes, choice))
        if max(choice) <= levels[-1] and S.overall_sparsity(table, prune_dict) >= target:
            feasible.append(S.predicted_drop(table, prune_dict))
    suggestion = S.suggest_prune_dict(table, target)
    assert S.overall_sparsity(table, suggestion) >= target
    assert S.predicted_drop(table, suggestion) <= min(feasible) + 1e-9


def test_suggestion_counts_what_short_rows_really_reach():
    torch.manual_seed(4)  # a conv with 1 input channel: rows of length 1, never prunable with banks
    model = nn.Sequential(nn.Conv2d(1, 64, 3), nn.Conv2d(64, 64, 3))
    table = S.sweep(model, lambda m: 0.0, levels=[0.5, 0.9375], progress=False)
    assert table.realised("0.weight", 0.9375) == 0.0
    uniform = S.overall_sparsity(table, {n: 0.9375 for n in table.names})
    suggestion = S.suggest_prune_dict(table, uniform)
    assert S.overall_sparsity(table, suggestion) == pytest.approx(uniform)
    assert suggestion["0.weight"] == 0.0


def test_max_drop_alone_and_with_target():
    model = _mlp()
    table = S.sweep(model, error_score(model, torch.randn(64, 192)), levels=[0.5, 0.75, 0.9], progress=False)
    drops = dict(zip(table.names, table.drops()))
    tolerated = sorted(d[1] for d in drops.values())[1]
    suggestion = S.suggest_prune_dict(table, max_drop=tolerated)
    for name, level in suggestion.items():
        allowed = [lv for lv, d in zip(table.levels, drops[name]) if d <= tolerated]
        assert level == (allowed[-1] if allowed else 0.0)
    reachable = S.overall_sparsity(table, suggestion)
    within = S.suggest_prune_dict(table, reachable / 2, tolerated)
    assert all(within[n] <= suggestion[n] for n in table.names)
    with pytest.raises(ValueError, match="target=0.95 is not reachable"):
        S.suggest_prune_dict(table, 0.95)
    with pytest.raises(ValueError, match="target=None and max_drop=None"):
        S.suggest_prune_dict(table)
    with pytest.raises(ValueError, match="max_drop=-1"):
        S.suggest_prune_dict(table, 0.5, -1)
    with pytest.raises(ValueError, match="sizes="):
        S.suggest_prune_dict(table, 0.5, sizes={"0.weight": 1})


# ---------------------------------------------------------------- dumps and plots


def test_json_round_trip_csv_and_plots(tmp_path):
    from pruning_tools.demo.sensitivity_plots import plot_curves, plot_targets

    model = small_cnn()
    table = S.sweep(
        model,
        lambda m: float(sum(p.detach().abs().sum() for p in m.parameters())),
        levels=[0.5, 0.75],
        bank_size=8,
        progress=False,
    )
    again = S.SensitivityTable.load_json(table.save_json(tmp_path / "t.json"))
    assert again == table
    rows = list(csv.DictReader(table.save_csv(tmp_path / "t.csv").open()))
    assert len(rows) == len(table.names) * len(table.levels)
    assert float(rows[0]["score"]) == table.scores[0][0]
    suggestion = S.suggest_prune_dict(table, 0.5)
    for path in (plot_curves(table, tmp_path / "c.png"), plot_targets(table, {"s": suggestion}, tmp_path / "t.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- command line


def test_cli_with_a_user_model(tmp_path, monkeypatch):
    (tmp_path / "toy_sensitivity_model.py").write_text(
        textwrap.dedent("""
        import torch

        def build():
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 128))
            x = torch.randn(16, 64)
            dense = model(x).detach()
            return model, lambda m: -float(((m(x) - dense) ** 2).mean().detach())
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("toy_sensitivity_model", None)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "sensitivity",
            "--model",
            "toy_sensitivity_model:build",
            "--levels",
            "0.5,0.9",
            "--uniform",
            "0.75",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "suggestion.json").read_text())
    assert report["overall_sparsity"] >= report["target"] == 0.75
    assert set(report["prune_dict"]) == {"0.weight", "1.weight"}
    assert {p.name for p in out.iterdir()} >= {
        "sensitivity.json",
        "sensitivity.csv",
        "sensitivity.png",
        "targets.png",
        "suggestion.json",
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no_colon"], "expected 'pkg.module:function'"),
        (["--model", "json:nothing_here"], "nothing_here"),
        (["--model", "json:dumps", "--target", "0.5", "--uniform", "0.5"], "not both"),
        (["--model", "json:dumps", "--target", "1.5"], "Invalid value for '--target': '1.5' is not in [0, 1)"),
        (["--model", "json:dumps", "--target", "nan"], "'nan' is not in [0, 1)"),
        (["--model", "json:dumps", "--max-drop", "-0.1"], "not a finite number >= 0"),
        (["--model", "json:dumps", "--levels", "0.5,x"], "expected comma-separated numbers"),
        (["--model", "json:dumps", "--bank-size", "1"], "Invalid value for '--bank-size': 1 is not in the range x>=2"),
        (["--model", "json:dumps", "--levels", "0.5,nan"], "levels[1]=nan"),
    ],
)
def test_cli_errors(args, message, tmp_path):
    result = CliRunner().invoke(main, ["sensitivity", "--out", str(tmp_path), *args])
    assert result.exit_code != 0 and message in result.output


def test_cli_mnist_default_model(tmp_path, monkeypatch):
    from pruning_tools.demo import data as mnist
    from pruning_tools.demo import trainer

    rng = np.random.default_rng(0)  # a tiny stand-in for MNIST: the command's path, not the data, is tested
    tiny = mnist.MnistData(
        rng.integers(0, 256, (96, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 96, dtype=np.uint8),
        rng.integers(0, 256, (32, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 32, dtype=np.uint8),
    )
    monkeypatch.setattr(mnist, "load_mnist", lambda data_dir=None: tiny)
    monkeypatch.setattr(trainer, "load_mnist", lambda data_dir=None: tiny)
    common = ["sensitivity", "--score-images", "64", "--levels", "0.5,0.9", "--no-progress"]
    result = CliRunner().invoke(main, [*common, "--epochs", "1", "--target", "0.6", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = S.SensitivityTable.load_json(tmp_path / "sensitivity.json")
    assert table.names == ["conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"]
    assert json.loads((tmp_path / "suggestion.json").read_text())["overall_sparsity"] >= 0.6
    rerun = CliRunner().invoke(
        main, [*common, "--weights", str(tmp_path / "dense.safetensors"), "--out", str(tmp_path / "again")]
    )
    assert rerun.exit_code == 0, rerun.output
    again = S.SensitivityTable.load_json(tmp_path / "again" / "sensitivity.json")
    # the first run scores the model reloaded from dense.safetensors, as the second does; a tolerance
    # all the same: no test may rest on arithmetic order (vector width, threads, memory format)
    assert (again.names, again.levels, again.sizes()) == (table.names, table.levels, table.sizes())
    assert again.baseline == pytest.approx(table.baseline, rel=1e-6)
    assert np.allclose(again.scores, table.scores, rtol=1e-6, atol=0)
    assert table.baseline < 0  # minus the cross-entropy by default
    by_accuracy = CliRunner().invoke(
        main,
        [
            *common,
            "--weights",
            str(tmp_path / "dense.safetensors"),
            "--score",
            "accuracy",
            "--out",
            str(tmp_path / "acc"),
        ],
    )
    assert by_accuracy.exit_code == 0, by_accuracy.output
    assert 0 <= S.SensitivityTable.load_json(tmp_path / "acc" / "sensitivity.json").baseline <= 1


# ---------------------------------------------------------------- MXNet through the same core


@pytest.mark.mxnet
def test_mxnet_block_restored_exactly_and_same_table_as_pytorch():
    mx = pytest.importorskip("mxnet")
    torch_model = _mlp((128, 64, 32))
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(64, in_units=128), mx.gluon.nn.Dense(32, in_units=64))
    net.initialize()
    for block, layer in zip(net, torch_model):
        block.weight.set_data(mx.nd.array(layer.weight.detach().numpy()))
        block.bias.set_data(mx.nd.array(layer.bias.detach().numpy()))
    before = {n: p.data().asnumpy().copy() for n, p in net.collect_params().items()}
    x = torch.randn(8, 128)

    def score_torch(m):
        return float(m(x).detach().square().sum())

    def score_mxnet(n):
        return float(n(mx.nd.array(x.numpy())).square().sum().asscalar())

    levels = [0.5, 0.75, 0.9]
    ours = S.sweep(net, score_mxnet, levels=levels, bank_size=16, progress=False)
    theirs = S.sweep(torch_model, score_torch, levels=levels, bank_size=16, progress=False)
    for name, p in net.collect_params().items():
        assert np.array_equal(p.data().asnumpy(), before[name]), name
    assert len(ours.names) == 2 and ours.levels == theirs.levels
    assert np.allclose(ours.scores, theirs.scores, rtol=1e-4)
    suggestion = S.suggest_prune_dict(ours, 0.6)  # keyed by Gluon names
    assert list(suggestion) == ours.names and S.overall_sparsity(ours, suggestion) >= 0.6
    # the scores of two frameworks agree only up to rounding: two choices that cost the same up to
    # rounding may swap, so compare what the choices cost, not which one won
    torch_suggestion = S.suggest_prune_dict(theirs, 0.6)
    drops = S.predicted_drop(ours, suggestion), S.predicted_drop(theirs, torch_suggestion)
    assert drops[0] == pytest.approx(drops[1], rel=1e-3, abs=1e-6)


def test_sweep_rejects_other_models():
    with pytest.raises(TypeError, match="model=str"):
        S.sweep("model", lambda m: 1.0, progress=False)
