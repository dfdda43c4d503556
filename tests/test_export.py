"""Packed bank-sparse format: bit-exact round trips, errors, file size."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pruning_tools import export as E
from pruning_tools.masks import bank_mask, check_banks
from pruning_tools.pruner import pruned_specs

BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def bank_sparse(shape, sparsity, bank_size=64, layout="channels_last", out_dim=0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g).to(dtype)
    return w * bank_mask(w, None, sparsity, bank_size, layout, out_dim)


def assert_bit_exact(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same shape, dtype and bits, with negative zeros read as +0.0."""
    assert a.shape == b.shape and a.dtype == b.dtype
    canon = lambda t: torch.where(t == 0, torch.zeros_like(t), t).view(BITS[t.dtype])  # noqa: E731
    assert torch.equal(canon(a), canon(b))


@pytest.mark.parametrize(
    "shape, bank_size, layout, out_dim",
    [
        ((64, 256), 64, "channels_last", 0),  # Linear, no tail bank
        ((10, 100), 64, "channels_last", 0),  # tail bank of 36
        ((7, 70), 64, "channels_last", 0),  # tail bank of 6 keeps 1 at 93.75 %
        ((16, 24, 3, 3), 16, "channels_last", 0),  # conv rows along input channels, tail of 8
        ((16, 24, 3, 3), 64, "flat", 0),  # conv rows W[o].flatten(): 216 = 3 * 64 + 24
        ((24, 8, 5, 5), 16, "channels_last", 1),  # ConvTranspose weight [in, out, kh, kw]
        ((32, 48), 4, "channels_last", 0),  # 2:4
        ((4, 600), 300, "channels_last", 0),  # indices need int16
        ((3, 5, 40), 8, "flat", 0),  # 1-D conv
        ((1, 5, 64), 16, "last_dim", 0),  # an N-D parameter no conv owns: rows along the last dim
        ((128, 384), 64, "channels_last", 1),  # GPT-2 Conv1D [in, out]: rows along the input dim
    ],
)
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.9375])
def test_round_trip_is_bit_exact(shape, bank_size, layout, out_dim, sparsity):
    w = bank_sparse(shape, sparsity, bank_size, layout, out_dim)
    p = E.pack(w, bank_size, layout, out_dim)
    rows = p.values.shape[0]
    assert p.values.shape[1] == p.row_len // bank_size
    assert p.indices.shape == p.values.shape and p.tail_indices.shape == p.tail_values.shape
    assert p.indices.dtype == (torch.uint8 if bank_size <= 256 else torch.int16)
    assert p.tail_values.shape[0] == rows
    assert_bit_exact(E.unpack(p), w)
    assert torch.equal(E.unpack(p), w)


def test_stored_count_is_the_bank_budget():
    w = bank_sparse((8, 4 * 64 + 20), 0.9375)  # keep 4 of 64; the tail bank of 20 keeps 1
    p = E.pack(w)
    assert (p.k, p.tail_k) == (4, 1)
    assert p.values.shape == (8, 4, 4) and p.tail_values.shape == (8, 1)
    assert bool((p.values != 0).all())  # exactly the non-zeros, no padding needed
    assert bool((p.indices[..., 1:] > p.indices[..., :-1]).all())  # positions ascending


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_dtypes_and_special_values_survive(dtype, tmp_path):
    w = bank_sparse((6, 128), 0.75, dtype=dtype)
    w[0, w[0].nonzero()[0, 0]] = float("nan")
    w[1, w[1].nonzero()[0, 0]] = float("-inf")
    w[2, w[2].nonzero()[0, 0]] = torch.finfo(dtype).tiny / 2 if dtype != torch.bfloat16 else 1e-39  # subnormal
    report = E.save_packed({"w": w}, tmp_path / "m.safetensors", bank_size=64)
    assert list(report.packed) == ["w"]
    back = E.load_packed(tmp_path / "m.safetensors")["w"]
    assert back.dtype == dtype
    assert_bit_exact(back, w)


def test_negative_zeros_come_back_as_positive_zeros():
    w = bank_sparse((4, 64), 0.9)
    w = w * (w.abs() > 0)  # keeps zeros
    w = torch.where(w == 0, torch.full_like(w, -0.0), w)  # every pruned weight is -0.0
    back = E.unpack(E.pack(w))
    assert torch.equal(back, w)
    assert not bool(torch.signbit(back[back == 0]).any())


def test_banks_below_budget_are_padded_with_zeros():
    w = bank_sparse((4, 128), 0.9375)
    w[0, :64] = 0  # an empty bank
    w[1, :64] = torch.where(torch.arange(64) == 5, w[1, :64] + 1, torch.zeros(64))  # one non-zero
    with pytest.raises(E.NotBankBalancedError):  # the one checker: by the measured sparsity, 3 per bank
        E.pack(w)
    assert not check_banks(w, 64).balanced  # what inspect says too
    p = E.pack(w, sparsity=0.9375)  # the target it was pruned to: 4 per bank
    assert p.k == 4
    assert torch.equal(E.unpack(p), w)
    assert bool((p.values[0, 0] == 0).all())


def test_not_bank_balanced_is_an_error_naming_the_tensor(tmp_path):
    w = torch.randn(16, 128)
    w = w * (w.abs() > 1.6)  # unstructured: some banks hold far more than others
    assert not check_banks(w, 64).balanced
    with pytest.raises(E.NotBankBalancedError, match=r"layer3\.weight"):
        E.pack(w, name="layer3.weight")
    with pytest.raises(E.NotBankBalancedError, match=r"layer3\.weight"):
        E.save_packed({"layer3.weight": w}, tmp_path / "x.safetensors", bank_size=64)
    report = E.save_packed({"layer3.weight": w}, tmp_path / "x.safetensors", bank_size=64, dense_fallback=True)
    assert report.fallback == ["layer3.weight"] and not report.packed
    assert torch.equal(E.load_packed(tmp_path / "x.safetensors")["layer3.weight"], w)


def test_file_round_trip_keeps_dense_tensors_and_metadata(tmp_path):
    state = {
        "conv.weight": bank_sparse((32, 16, 3, 3), 0.75, bank_size=16),
        "conv.bias": torch.randn(32),
        "fc.weight": bank_sparse((10, 200), 0.9),
        "fc.bias": torch.randn(10),
        "bn.num_batches_tracked": torch.tensor(7),
        "embed.weight": torch.randn(5, 64),  # dense: stays dense
    }
    path = tmp_path / "model.safetensors"
    report = E.save_packed(state, path, bank_size=16, specs={"fc.weight": {"bank_size": 64}})
    assert sorted(report.packed) == ["conv.weight", "fc.weight"]
    assert report.dense == ["bn.num_batches_tracked", "conv.bias", "embed.weight", "fc.bias"]
    back = E.load_packed(path)
    assert set(back) == set(state)
    for name, t in state.items():
        if t.is_floating_point():
            assert_bit_exact(back[name], t)
        else:
            assert torch.equal(back[name], t) and back[name].dtype == t.dtype
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[E.METADATA_KEY])
    assert meta["format"] == E.FORMAT
    assert meta["packed"]["fc.weight"] == {
        "shape": [10, 200],
        "dtype": "float32",
        "bank_size": 64,
        "layout": "channels_last",
        "out_dim": 0,
        "k": 6,
        "tail_k": 1,
    }
    packed = E.read_packed(path)
    assert isinstance(packed["fc.weight"], E.PackedTensor) and packed["fc.weight"].k == 6


def test_file_size_at_93_75_percent_is_under_a_tenth(tmp_path):
    state = {
        "fc1.weight": bank_sparse((512, 1024), 0.9375),
        "fc1.bias": torch.randn(512),
        "fc2.weight": bank_sparse((256, 512), 0.9375),
        "fc2.bias": torch.randn(256),
    }
    report = E.save_packed(state, tmp_path / "p.safetensors", bank_size=64)
    dense_path = tmp_path / "d.safetensors"
    safetensors.torch.save_file(state, str(dense_path))
    assert report.dense_bytes == dense_path.stat().st_size
    assert report.packed_bytes == (tmp_path / "p.safetensors").stat().st_size
    assert report.ratio <= 0.10, report.ratio
    assert report.ratio == pytest.approx((4 * 4 + 4) / (64 * 4), abs=0.01)  # 4 values + 4 uint8 per bank


def test_bad_arguments_name_the_argument(tmp_path):
    w = bank_sparse((4, 64), 0.5)
    with pytest.raises(ValueError, match="bank_size=1"):
        E.pack(w, bank_size=1)
    with pytest.raises(ValueError, match="layout='rows'"):
        E.save_packed({"w": w}, tmp_path / "x.safetensors", bank_size=64, layout="rows")
    with pytest.raises(ValueError, match=">= 2 dims"):
        E.pack(torch.randn(8))
    with pytest.raises(ValueError, match="must not contain"):
        E.save_packed({"a::b": w}, tmp_path / "x.safetensors", bank_size=64)
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": w}, str(plain))
    with pytest.raises(ValueError, match="not a packed file"):
        E.read_packed(plain)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    row_len=st.integers(1, 150),
    bank_size=st.sampled_from([2, 4, 8, 64, 100]),
    sparsity=st.sampled_from([0.0, 0.3, 0.5, 0.75, 0.9, 0.95]),
    seed=st.integers(0, 2**16),
)
def test_any_bank_balanced_tensor_round_trips(rows, row_len, bank_size, sparsity, seed):
    w = bank_sparse((rows, row_len), sparsity, bank_size, seed=seed)
    assert torch.equal(E.unpack(E.pack(w, bank_size)), w)


def test_budget_from_the_pruning_target_when_given():
    w = bank_sparse((6, 100), 0.9)  # 6 of 64; the tail bank of 36 keeps 4
    assert E.pack(w, sparsity=0.9).k == 6
    assert E.pack(w).tail_k == 4  # most common count (6) bounds the tail bank too
    with pytest.raises(E.NotBankBalancedError, match=r"more than 4 \(tail 2\)"):
        E.pack(w, sparsity=0.9375, name="fc")


def test_export_command(tmp_path):
    from click.testing import CliRunner

    from pruning_tools.cli import main

    state = {
        "fc1.weight": bank_sparse((256, 512), 0.9375),
        "fc1.bias": torch.randn(256),
        "fc2.weight": bank_sparse((10, 256), 0.9375),
        "fc2.bias": torch.randn(10),
    }
    torch.save({"model": state, "epoch": 3}, tmp_path / "ck.pt")
    runner = CliRunner()
    result = runner.invoke(
        main, ["export", str(tmp_path / "ck.pt"), str(tmp_path / "out.safetensors"), "--prefix", "model."]
    )
    assert result.exit_code == 0, result.output
    ratio = float(result.output.split("ratio: ")[1].split()[0])
    assert ratio <= 0.10
    assert "verified: all 4 tensors" in result.output
    back = E.load_packed(tmp_path / "out.safetensors")
    for name, t in state.items():
        assert_bit_exact(back[name], t)

    messy = dict(state, **{"fc1.weight": state["fc1.weight"] + torch.randn(256, 512) * (torch.rand(256, 512) > 0.8)})
    safetensors.torch.save_file(messy, str(tmp_path / "messy.safetensors"))
    result = runner.invoke(main, ["export", str(tmp_path / "messy.safetensors"), str(tmp_path / "o.safetensors")])
    assert result.exit_code == 1 and "fc1.weight" in result.output and "--dense-fallback" in result.output
    result = runner.invoke(
        main,
        [
            "export",
            str(tmp_path / "messy.safetensors"),
            str(tmp_path / "o.safetensors"),
            "--dense-fallback",
            "--sparsity",
            "0.9375",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "dense (not bank-balanced)" in result.output
    result = runner.invoke(
        main, ["export", str(tmp_path / "ck.pt"), str(tmp_path / "o.safetensors"), "--bank-size", "1"]
    )
    assert result.exit_code == 2 and "--bank-size" in result.output


def test_export_command_takes_the_pruner_settings(tmp_path):
    from click.testing import CliRunner

    from pruning_tools import Prune
    from pruning_tools.cli import main

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(16, 32, 3),
        torch.nn.ConvTranspose2d(32, 16, 3),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 8 * 8, 10),
    )
    prune = Prune(
        model,
        0,
        0,
        1,
        {
            "0.weight": {"sparsity": 0.75, "bank_size": 16},
            "1.weight": {"sparsity": 0.75, "bank_size": 16},
            "3.weight": {"sparsity": 0.9, "balance": "none"},
        },
    )
    prune.prune()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    torch.save(prune.state_dict(), tmp_path / "state.pt")
    spec = pruned_specs(prune.state_dict())["1.weight"]  # the typed spec, geometry and mask target
    assert (spec.bank_size, spec.layout, spec.out_dim, spec.sparsity, spec.balance) == (
        16,
        "channels_last",
        1,
        0.75,
        "fix",
    )
    assert pruned_specs(prune) == pruned_specs(prune.state_dict())
    assert pruned_specs(prune)["3.weight"].balance == "none"  # unstructured: exported dense
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(tmp_path / "m.pt"), str(tmp_path / "p.safetensors")])
    assert result.exit_code == 1 and "1.weight" in result.output  # ConvTranspose read with out_dim 0
    result = runner.invoke(
        main,
        [
            "export",
            str(tmp_path / "m.pt"),
            str(tmp_path / "p.safetensors"),
            "--pruner-state",
            str(tmp_path / "state.pt"),
        ],
    )
    assert result.exit_code == 0, result.output
    packed = E.read_packed(tmp_path / "p.safetensors")
    assert packed["1.weight"].out_dim == 1 and packed["1.weight"].bank_size == 16 and packed["1.weight"].k == 4
    assert isinstance(packed["3.weight"], torch.Tensor)  # unstructured: kept dense
    for name, t in model.state_dict().items():
        assert_bit_exact(E.load_packed(tmp_path / "p.safetensors")[name], t)
    result = runner.invoke(
        main,
        ["export", str(tmp_path / "m.pt"), str(tmp_path / "p.safetensors"), "--pruner-state", str(tmp_path / "m.pt")],
    )
    assert result.exit_code == 2 and "not a pruner state" in result.output


def test_damaged_packed_files_name_the_file_and_the_tensor(tmp_path):
    w = torch.randn(8, 128)
    w = w * bank_mask(w, None, 0.9375)
    good = tmp_path / "good.safetensors"
    E.save_packed({"fc.weight": w, "fc.bias": torch.ones(8)}, good, bank_size=64)
    flat = safetensors.torch.load_file(str(good))
    with safetensors.safe_open(str(good), "pt") as f:
        meta = json.loads(f.metadata()[E.METADATA_KEY])

    def write(name, tensors, metadata):
        path = tmp_path / name
        safetensors.torch.save_file(tensors, str(path), metadata={E.METADATA_KEY: json.dumps(metadata)})
        return path

    missing_part = write("part.safetensors", {k: v for k, v in flat.items() if not k.endswith("::indices")}, meta)
    no_shape = json.loads(json.dumps(meta))
    del no_shape["packed"]["fc.weight"]["shape"]
    bad_index = dict(flat)
    bad_index["fc.weight::indices"] = torch.full_like(flat["fc.weight::indices"], 200)  # past a bank of 64
    cases = [
        (missing_part, "'fc.weight' is incomplete"),
        (write("shape.safetensors", flat, no_shape), "'fc.weight' is incomplete"),
        (write("index.safetensors", bad_index, meta), "'fc.weight'"),
        (write("format.safetensors", flat, {**meta, "format": "other/9"}), "has format 'other/9'"),
    ]
    text = tmp_path / "text.safetensors"
    text.write_text("not safetensors")
    cases.append((text, "not a readable safetensors file"))
    for path, message in cases:
        with pytest.raises(ValueError) as caught:
            E.load_packed(path)
        assert str(path) in str(caught.value) and message in str(caught.value), str(caught.value)


def test_export_command_reads_transposed_weights(tmp_path):
    from click.testing import CliRunner

    from pruning_tools.cli import main

    c_attn = bank_sparse((128, 384), 0.9375, 64, "channels_last", 1)  # Conv1D [in, out], banked along in
    safetensors.torch.save_file({"h.0.attn.c_attn.weight": c_attn}, str(tmp_path / "gpt2.safetensors"))
    args = ["export", str(tmp_path / "gpt2.safetensors"), str(tmp_path / "o.safetensors"), "--sparsity", "0.9375"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "not bank-balanced" in refused.output
    result = CliRunner().invoke(main, [*args, "--transposed", "*.c_attn.weight"])
    assert result.exit_code == 0, result.output
    packed = E.load_packed(tmp_path / "o.safetensors")
    assert_bit_exact(packed["h.0.attn.c_attn.weight"], c_attn)


def test_save_packed_takes_the_geometry_from_the_pruner(tmp_path):
    """A 2:4 model saved with its pruner is stored as bank 4, never as a guessed bank 64."""
    from pruning_tools import Prune

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    prune = Prune(model, 0, 0, 1, {"0.weight": 0.5}, bank_size=4)
    prune.prune()
    report = E.save_packed(model, tmp_path / "m.safetensors", prune)
    assert set(report.packed) == {"0.weight"} and report.packed["0.weight"].bank_size == 4
    assert report.packed["0.weight"].k == 2 and "2.weight" in report.dense
    again = E.save_packed(model.state_dict(), tmp_path / "s.safetensors", prune.state_dict())
    assert again.packed["0.weight"].bank_size == 4
    with pytest.raises(ValueError, match=r"bank_size=None is not allowed without prune="):
        E.save_packed(model, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match=r"prune= is not allowed together with specs= or bank_size="):
        E.save_packed(model, tmp_path / "x.safetensors", prune, bank_size=64)
    with pytest.raises(TypeError, match=r"prune=int is not allowed"):
        E.save_packed(model, tmp_path / "x.safetensors", 64)
    assert not (tmp_path / "x.safetensors").exists()


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda s: "::" not in s),
        st.tuples(st.sampled_from(sorted(E._SAFETENSORS_DTYPES, key=str)), st.lists(st.integers(0, 5), max_size=3)),
        max_size=8,
    )
)
def test_dense_size_is_computed_exactly_without_serialising(spec):
    tensors = {name: torch.zeros(shape, dtype=dtype) for name, (dtype, shape) in spec.items()}
    assert E.safetensors_bytes(tensors) == len(safetensors.torch.save(tensors))


def test_pack_state_dict_names_the_entry_of_a_bad_spec_or_out_dim():
    w = torch.randn(4, 8)
    w = w * bank_mask(w, None, 0.5, bank_size=4)
    tensors = {"w": w}
    assert E.pack_state_dict(tensors, specs={"w": {"bank_size": 4, "sparsity": 0.5}})[0]["w"].k == 2
    assert E.pack_state_dict(tensors, bank_size=4, specs={"w": {"dense": True}})[1].keys() == {"w"}
    with pytest.raises(ValueError, match=r"specs\['w'\]=.*'bank_sise'.*expected keys among"):
        E.pack_state_dict(tensors, specs={"w": {"bank_sise": 4}})
    with pytest.raises(ValueError, match=r"specs\['w'\]: bank_size=1 is not allowed"):
        E.pack_state_dict(tensors, specs={"w": {"bank_size": 1}})
    with pytest.raises(ValueError, match=r"specs\['w'\]\['dense'\]='yes' is not allowed"):
        E.pack_state_dict(tensors, specs={"w": {"dense": "yes"}})
    with pytest.raises(ValueError, match=r"out_dims\['w'\]: out_dim=2 is not allowed"):
        E.pack_state_dict(tensors, bank_size=4, out_dims={"w": 2})
    with pytest.raises(ValueError, match="layout='rows' is not allowed"):
        E.pack_state_dict(tensors, layout="rows")
