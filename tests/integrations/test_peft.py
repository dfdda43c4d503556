"""LoRA fine-tuning of a pruned model (PEFT): the merged LoRA update is dense, so the pruner's masks
are applied again after ``merge_and_unload()`` (the README's recipe); the result is the pruned model
with the LoRA update restricted to the kept weights, bank-balanced as before."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from pruning_tools import Prune, check_banks  # noqa: E402
from tests.tiny_transformers import tiny_llama, token_data  # noqa: E402


def test_lora_merge_keeps_the_pruned_model_sparse():
    model = tiny_llama()
    prune_dict = {n: 0.75 for n, p in model.named_parameters() if n.endswith(("q_proj.weight", "v_proj.weight"))}
    prune = Prune(model, 0, 0, 1, prune_dict, bank_size=16)
    prune.prune()  # one-shot: keep 4 of every 16
    pruned = {name: model.get_parameter(name).detach().clone() for name in prune_dict}

    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    lora = peft.get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    for example in token_data(8, labels="lm"):
        loss = lora(input_ids=example["input_ids"][None], labels=example["labels"][None]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    merged = lora.merge_and_unload()  # W + B A: dense
    name = next(iter(prune_dict))
    assert not check_banks(merged.get_parameter(name), 16, sparsity=0.75).balanced
    with torch.no_grad():
        for name, keep in prune.masks().items():
            merged.get_parameter(name).masked_fill_(~keep, 0.0)  # the README's recipe
    assert prune.check()[1] and prune.sparsity()[1] == 0.75
    for name, before in pruned.items():
        after = merged.get_parameter(name)
        assert check_banks(after, 16, sparsity=0.75).balanced
        assert torch.equal(after != 0, before != 0)  # the same weights kept
        assert not torch.equal(after, before)  # and the LoRA update is in them
