"""Tiny BERT / GPT-2 / Llama built from configs (random init, nothing downloaded) and token data."""

from __future__ import annotations

import torch

transformers = __import__("pytest").importorskip("transformers")


def tiny_bert(seed: int = 0, hidden: int = 64, layers: int = 2) -> torch.nn.Module:
    """BertForSequenceClassification: hidden 64, 2 layers, vocab 100, 2 labels."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(config)


def tiny_gpt2(seed: int = 0, hidden: int = 64, layers: int = 2) -> torch.nn.Module:
    """GPT2LMHeadModel (Conv1D weights [in, out], lm_head tied to transformer.wte): vocab 100."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=100, n_embd=hidden, n_layer=layers, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def tiny_llama(seed: int = 0, hidden: int = 64, layers: int = 2) -> torch.nn.Module:
    """LlamaForCausalLM: hidden 64, 2 layers, vocab 100."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(config)


def token_data(n: int = 32, length: int = 8, seed: int = 0, labels: str = "class") -> list[dict]:
    """``n`` examples of ``length`` token ids; ``labels``: "class" (0/1) or "lm" (the ids themselves)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (n, length), generator=g)
    if labels == "class":
        return [{"input_ids": ids[i], "labels": ids[i, 0] % 2} for i in range(n)]
    return [{"input_ids": ids[i], "labels": ids[i]} for i in range(n)]
