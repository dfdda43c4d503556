"""A converted Hugging Face model refuses save_pretrained (from_pretrained would re-initialise its
bank-sparse layers at random) and names the path that keeps it: export + load_bank_sparse."""

from __future__ import annotations

import copy

import pytest
import torch

from pruning_tools import load_bank_sparse, pytorch_pruning, to_bank_sparse
from pruning_tools.export import save_packed
from pruning_tools.inference import calibration

from ..tiny_transformers import tiny_bert
from .conftest import TOL

EVERY = dict(min_speedup=1e-9, min_weights=0)


def pruned_bert():
    model = tiny_bert().eval()
    names = {n: 0.9375 for n, p in model.named_parameters() if p.dim() == 2 and "embeddings" not in n}
    prune = pytorch_pruning.Prune(model, 0, 0, 1, names, bank_size=64)
    prune.prune()
    return model, prune


def test_save_pretrained_of_a_converted_model_is_refused(tmp_path):
    model, prune = pruned_bert()
    report = to_bank_sparse(model, prune, **EVERY)
    assert report.converted and any("save_pretrained refused" in note for note in report.notes)
    with pytest.raises(RuntimeError, match=r"BertForSequenceClassification.save_pretrained is refused.*"
                       r"pruning-tools export.*load_bank_sparse"):  # fmt: skip
        model.save_pretrained(tmp_path / "saved")
    with pytest.raises(RuntimeError, match="save_pretrained is refused"):
        model.bert.save_pretrained(tmp_path / "inner")  # the inner PreTrainedModel holds converted layers too
    assert not (tmp_path / "saved").exists()
    clone = copy.deepcopy(model)
    with pytest.raises(RuntimeError, match="save_pretrained is refused"):
        clone.save_pretrained(tmp_path / "clone")


def test_an_unconverted_model_still_saves(tmp_path):
    model, prune = pruned_bert()
    slow = calibration.Calibration(
        {}, 1.0, 1.0, {f: (calibration.Point(1000, 1, 1.0, 1e3),) for f in calibration.FAMILIES}
    )
    with calibration.use_calibration(slow):  # a machine where nothing pays: nothing converted, nothing refused
        report = to_bank_sparse(model, prune)
    assert report.converted == [] and not report.notes
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved").is_dir()
    other, _ = pruned_bert()
    other.save_pretrained(tmp_path / "plain")  # a model never converted: the class's own method
    assert (tmp_path / "plain").is_dir()


def test_the_documented_path_keeps_the_model(tmp_path):
    model, prune = pruned_bert()
    inputs = {"input_ids": torch.randint(0, 100, (2, 12))}
    with torch.no_grad():
        expected = model(**inputs).logits
    path = tmp_path / "bert.packed.safetensors"
    save_packed(model, path, prune)
    fresh = tiny_bert(seed=5).eval()  # another initialisation of the architecture
    report = load_bank_sparse(fresh, path, **EVERY)
    assert report.converted
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).logits, expected, **TOL)
