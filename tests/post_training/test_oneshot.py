"""``pruning_tools.oneshot``: block-by-block calibration, the report, bad input, then fine-tuning."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import pruning_tools
from pruning_tools import geometry as G
from pruning_tools import masks as M
from pruning_tools.pytorch_pruning import Prune

from .reference import ref_banks, ref_sparsegpt


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, x, scale=1.0):
        return x + scale * self.down(torch.relu(self.up(self.ln(x))))


class Tiny(nn.Module):
    """Embedding -> blocks (a ModuleList) -> head; ``gap`` puts an operation between blocks."""

    def __init__(self, d: int = 16, layers: int = 3, gap: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(32, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.head = nn.Linear(d, 32)
        self.gap = gap

    def forward(self, tokens, scale=1.0):
        x = self.emb(tokens)
        for block in self.blocks:
            x = block(x, scale=scale)
            if self.gap:
                x = x * 0.5
        return self.head(x)


def tiny(gap: bool = False, dtype=torch.float64) -> Tiny:
    torch.manual_seed(0)
    return Tiny(gap=gap).to(dtype)


def calibration(n: int = 4, seed: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 32, (3, 10), generator=g) for _ in range(n)]


LINEARS = {"blocks.*.up.weight": 0.5, "blocks.*.down.weight": 0.5}
PRUNE = {**LINEARS, "head.weight": {"sparsity": 0.75, "balance": "none"}}


def sequential_reference(model: Tiny, batches, bank_size: int = 4) -> dict[str, torch.Tensor]:
    """Group by group (each block, then the head): run the partly pruned model, record the inputs of
    the group's layers, prune each by the reference SparseGPT, write; the next group sees them."""
    params = dict(model.named_parameters())
    groups = [[f"blocks.{i}.up", f"blocks.{i}.down"] for i in range(len(model.blocks))] + [["head"]]
    modules = dict(model.named_modules())
    for group in groups:
        inputs: dict[str, list] = {name: [] for name in group}
        hooks = [
            modules[name].register_forward_hook(
                lambda m, a, o, rows=inputs[name]: rows.append(a[0].reshape(-1, a[0].shape[-1]))
            )
            for name in group
        ]
        with torch.no_grad():
            for batch in batches:
                model(batch)
        for h in hooks:
            h.remove()
        for name in group:
            w = params[f"{name}.weight"].detach()
            x = torch.cat(inputs[name])
            if name == "head":
                new, _ = ref_sparsegpt(w, x, None, G.keep_count(w.numel(), 0.75))
            else:
                new, _ = ref_sparsegpt(w, x, ref_banks(w.shape[1], w.shape[1], bank_size, 0.5), 0)
            with torch.no_grad():
                params[f"{name}.weight"].copy_(new)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("gap", [False, True])
def test_block_by_block_equals_the_sequential_reference(gap):
    batches = calibration()
    expected = sequential_reference(tiny(gap), batches)
    model = tiny(gap)
    report = pruning_tools.oneshot(model, batches, PRUNE, method="sparsegpt", bank_size=4)
    assert report.mode == ("full passes" if gap else "chained blocks")
    for name, p in model.named_parameters():
        assert torch.allclose(p, expected[name], rtol=1e-7, atol=1e-10), name
    assert list(report.layers) == [*(f"blocks.{i}.{k}.weight" for i in range(3) for k in ("up", "down")), "head.weight"]


def test_keyword_arguments_and_custom_forward_reach_every_block():
    batches = [{"tokens": t, "scale": 0.5} for t in calibration()]
    a, b = tiny(), tiny()
    report = pruning_tools.oneshot(a, batches, PRUNE, method="wanda", bank_size=4)
    pruning_tools.oneshot(b, calibration(), PRUNE, method="wanda", bank_size=4, forward=lambda m, t: m(t, scale=0.5))
    assert report.mode == "chained blocks"
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_report_contents_and_progress(tmp_path):
    model = tiny(dtype=torch.float32)
    seen = []
    report = pruning_tools.oneshot(
        model,
        calibration(),
        PRUNE,
        method="sparsegpt",
        bank_size=4,
        progress=lambda i, n, name: seen.append((i, n, name)),
    )
    assert seen == [(i + 1, 7, name) for i, name in enumerate(report.layers)]
    up = report.layers["blocks.0.up.weight"]
    assert (up.method, up.pattern, up.target, up.sparsity, up.balanced) == ("sparsegpt", "2:4", 0.5, 0.5, True)
    assert up.rows == 4 * 3 * 10 and 0 <= up.error_after < up.error_before < 1 and up.damping == pytest.approx(0.01)
    assert report.layers["head.weight"].pattern == "unstructured"
    assert report.layers["head.weight"].sparsity == pytest.approx(0.75)
    assert report.peak_bytes > 0 and report.peak_rss_bytes > 0 and report.seconds > 0 and report.batches == 4
    assert report.sparsity == pytest.approx((6 * 512 * 0.5 + 512 * 0.75) / (6 * 512 + 512))
    json.dumps(report.to_dict())


def test_then_fine_tune_with_restore_sparsity_keeps_the_masks():
    model = tiny(dtype=torch.float32)
    pruning_tools.oneshot(model, calibration(), PRUNE, method="sparsegpt", bank_size=4)
    zeros = {name: p == 0 for name, p in model.named_parameters() if name.endswith("weight")}
    prune = Prune(model, 0, 0, 1, PRUNE, restore_sparsity=True, bank_size=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for tokens in calibration(6, seed=9):
        loss = nn.functional.cross_entropy(model(tokens[:, :-1]).reshape(-1, 32), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        prune.prune()
    for name, p in model.named_parameters():
        if name in prune.config.params:
            assert torch.equal(p == 0, zeros[name]), name
    assert prune.check()[1]


def test_magnitude_needs_no_calibration_and_handles_any_parameter():
    model = tiny(dtype=torch.float32)
    expected = M.bank_mask(model.blocks[0].up.weight, None, 0.5, 4)
    with pytest.warns(UserWarning, match="fewer than 2 dims"):  # the LayerNorm gains: unstructured
        report = pruning_tools.oneshot(
            model, None, {"*.weight": 0.5, "emb.weight": 0.5}, method="magnitude", bank_size=4
        )
    assert report.mode == "no calibration" and report.layers["blocks.0.up.weight"].error_after is None
    assert torch.equal(model.blocks[0].up.weight != 0, expected)
    assert report.layers["emb.weight"].sparsity == 0.5 and report.layers["blocks.0.ln.weight"].sparsity == 0.5
    model = tiny(dtype=torch.float32)
    with pytest.warns(UserWarning, match="fewer than 2 dims"):
        report = pruning_tools.oneshot(model, calibration(), {"*.weight": 0.5}, method="magnitude", balance="global")
    assert report.layers["emb.weight"].error_after is None and report.layers["head.weight"].error_after is not None
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)


# ---------------------------------------------------------------- bad input: clear errors, model untouched


def untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(
        bool(((p == before[name]) | (p.isnan() & before[name].isnan())).all()) for name, p in model.state_dict().items()
    ) and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.clone() for name, p in model.state_dict().items()}


BAD = [
    (dict(method="obs"), ValueError, r"method='obs' is not allowed: expected one of 'magnitude', 'wanda', 'sparsegpt'"),
    (dict(calibration=[]), ValueError, r"calibration yielded no batch \(an empty or already exhausted"),
    (dict(calibration=iter(())), ValueError, r"calibration yielded no batch"),
    (dict(calibration=torch.zeros(4, 10, dtype=torch.long)), TypeError, r"calibration=Tensor is not allowed"),
    (dict(calibration=[torch.zeros(3, 10, dtype=torch.long), 7]), TypeError, r"calibration batch 1 is a int"),
    (dict(calibration=[torch.zeros(3, 10)]), ValueError, r"calibration batch 0 cannot be consumed by the model: "),
    (dict(calibration=None), ValueError, r"calibration=None is not allowed with method='sparsegpt'"),
    (dict(prune_dict={"emb.weight": 0.5}), ValueError, r"cannot prune: emb.weight belongs to Embedding"),
    (
        dict(prune_dict={"*.bias": 0.5}),
        ValueError,
        r"cannot prune: blocks.0.ln.bias is a parameter 'bias' of LayerNorm",
    ),
    (dict(prune_dict={"nothing*": 0.5}), ValueError, r"prune_dict key 'nothing\*' matches no parameter"),
    (dict(prune_dict={"head.weight": 1.5}), ValueError, r"prune_dict\['head.weight'\]=1.5 is not allowed"),
    (dict(balance="global"), ValueError, r"balance='global' is not allowed with method='sparsegpt'"),
    (dict(damp=0), ValueError, r"damp=0 is not allowed: expected a finite number > 0"),
    (dict(block_size=0), ValueError, r"block_size=0 is not allowed"),
    (dict(bank_size=1), ValueError, r"bank_size=1 is not allowed"),
    (dict(blocks=["blocks.9"]), ValueError, r"blocks entry 'blocks.9' is not a module"),
    (dict(forward=3), TypeError, r"forward=3 is not allowed: expected a callable"),
]


@pytest.mark.parametrize("change, error, message", BAD)
def test_bad_input_is_a_clear_error_and_the_model_is_untouched(change, error, message):
    model = tiny(dtype=torch.float32)
    model.train()
    before = snapshot(model)
    arguments = dict(calibration=calibration(), prune_dict=LINEARS, method="sparsegpt", bank_size=4)
    arguments.update(change)
    with pytest.raises(error, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "*.bias" also draws the warning about 1-D parameters
        pruning_tools.oneshot(model, arguments.pop("calibration"), arguments.pop("prune_dict"), **arguments)
    assert untouched(model, before) and model.training


def test_non_finite_activations_are_refused_before_any_write():
    model = tiny(dtype=torch.float32)
    with torch.no_grad():
        model.emb.weight[3, 0] = float("nan")
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"blocks.0.up.weight: non-finite values .* the model is unchanged"):
        pruning_tools.oneshot(model, calibration(), LINEARS, method="wanda", bank_size=4)
    assert untouched(model, before)


def test_a_layer_the_forward_never_calls_is_refused():
    model = tiny(dtype=torch.float32)
    model.unused = nn.Linear(4, 4)
    before = snapshot(model)
    with pytest.raises(
        ValueError, match=r"\['unused.weight'\], whose modules \['unused'\] the forward pass never calls"
    ):
        pruning_tools.oneshot(model, calibration(), {**LINEARS, "unused.weight": 0.5}, method="sparsegpt", bank_size=4)
    assert untouched(model, before)


def test_a_failure_after_the_first_write_names_what_was_written():
    model = tiny(dtype=torch.float32)
    batches = calibration()
    calls = {"n": 0}

    def forward(m, batch):
        calls["n"] += 1
        if calls["n"] > 8:  # trace (1) + block inputs (4) + ... then fail in the head's full pass
            raise RuntimeError("device lost")
        return m(batch)

    with pytest.raises(
        ValueError,
        match=r"batch 3 cannot be consumed by the model: RuntimeError: device lost; already pruned and written: \['b",
    ):
        pruning_tools.oneshot(model, batches, PRUNE, method="sparsegpt", bank_size=4, forward=forward)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
