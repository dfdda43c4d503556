"""scripts/structured_vs_torch_pruning.py: both libraries run the demo's recipe; Torch-Pruning keeps Adam's state."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

tp = pytest.importorskip("torch_pruning")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "structured_vs_torch_pruning.py"
MNIST = Path(__file__).resolve().parents[2] / "data" / "mnist"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("structured_vs_torch_pruning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, stride=2), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2)
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.flatten(1))


def test_a_torch_pruning_step_slices_adams_state_with_the_weights(script) -> None:
    torch.manual_seed(0)
    model, x = Net(), torch.randn(4, 1, 11, 11)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    old = {name: (p.detach().clone(), {k: v.clone() for k, v in optimizer.state[p].items()})
           for name, p in model.named_parameters()}  # fmt: skip
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.5, ignored_layers=[model.fc])  # fmt: skip
    script.torch_pruning_step(pruner, model, optimizer)

    assert model.conv1.out_channels == 4 and model.conv2.out_channels == 3 and model.fc.in_features == 12
    params = dict(model.named_parameters())
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
    kept1 = [i for i in range(8) if any(torch.equal(old["conv1.weight"][0][i], w) for w in params["conv1.weight"])]
    assert len(kept1) == 4
    state = optimizer.state[params["conv1.weight"]]
    assert torch.equal(state["exp_avg"], old["conv1.weight"][1]["exp_avg"][kept1])
    assert torch.equal(state["exp_avg_sq"], old["conv1.weight"][1]["exp_avg_sq"][kept1])
    assert int(state["step"]) == 3
    assert torch.equal(optimizer.state[params["bn1.weight"]]["exp_avg"], old["bn1.weight"][1]["exp_avg"][kept1])
    assert torch.equal(optimizer.state[params["conv2.weight"]]["exp_avg"][:, :], _rows_of(old, params, kept1))
    fc = optimizer.state[params["fc.weight"]]["exp_avg"]
    assert fc.shape == params["fc.weight"].shape  # columns of the removed conv2 channels (2 x 2 positions each) gone
    optimizer.zero_grad()
    model(x).square().mean().backward()
    optimizer.step()  # Adam runs on the pruned model with the carried state


def _rows_of(old: dict, params: dict, kept1: list[int]) -> torch.Tensor:
    """conv2's old exp_avg restricted to its kept output channels and conv1's kept input channels."""
    weight, state = old["conv2.weight"][0], old["conv2.weight"][1]["exp_avg"]
    rows = [i for i in range(weight.shape[0]) if any(torch.equal(weight[i][kept1], w) for w in params["conv2.weight"])]
    return state[rows][:, kept1]


def test_both_libraries_run_the_demo_recipe_and_write_the_results(script, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    threads = torch.get_num_threads()
    script.main(["--data-dir", str(MNIST), "--fractions", "0.5", "--epochs", "2", "--limit", "256", "--out", str(out)])
    runs = json.loads(out.read_text())["runs"]
    ours, theirs = runs
    assert ours["library"] == "pruning_tools" and theirs["library"].startswith("torch_pruning")
    assert ours["params"][0] == theirs["params"][0] == 377_480
    assert ours["channels"] == theirs["channels"] == {"conv1.weight": 32, "conv2.weight": 63, "conv3.weight": 128}
    assert ours["params"][1] == theirs["params"][1] < ours["params"][0] // 3
    assert ours["test_accuracy"] == ours["masked_test_accuracy"]  # shrunk = masked
    assert [e["channels"]["conv1.weight"] for e in theirs["epochs"]][-1] == 32
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in runs)
    assert torch.get_num_threads() == threads  # both runs train on one thread and restore the count
