"""A small GPT (decoder-only transformer) over bytes: the language model of the LM demo.

Pre-norm blocks (LayerNorm -> causal self-attention -> residual, LayerNorm -> MLP -> residual), learned
positions, a byte vocabulary of 256, an untied output head. Every projection is an ``nn.Linear``
(``blocks.{i}.attn.qkv``, ``attn.proj``, ``mlp.fc``, ``mlp.proj``): the weights the demo prunes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

VOCAB = 256  # bytes


@dataclass(frozen=True)
class GPTConfig:
    """Shape of the model: ``layers`` blocks of width ``d_model`` with ``heads`` attention heads,
    an MLP of ``mlp_ratio * d_model``, sequences of at most ``context`` bytes."""

    layers: int = 4
    d_model: int = 256
    heads: int = 4
    mlp_ratio: int = 4
    context: int = 256
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.d_model // config.heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape  # sizes inside attention come from the weights, so a model with heads removed runs
        q, k, v = self.qkv(x).split(self.qkv.out_features // 3, dim=2)  # 3 x [b, t, heads * head_dim]
        q, k, v = (z.view(b, t, -1, self.head_dim).transpose(1, 2) for z in (q, k, v))  # [b, h, t, head_dim]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))  # [b, t, d]


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.mlp_ratio * config.d_model)
        self.proj = nn.Linear(config.mlp_ratio * config.d_model, config.d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """``forward(tokens [batch, t] int64) -> logits [batch, t, 256]`` (``t <= config.context``)."""

    def __init__(self, config: GPTConfig = GPTConfig()) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(VOCAB, config.d_model)
        self.pos = nn.Embedding(config.context, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, VOCAB, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / (2 * config.layers) ** 0.5)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        if t > self.config.context:
            raise ValueError(f"tokens of length {t} is not allowed: expected at most context={self.config.context}")
        x = self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device))  # [b, t, d]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))  # [b, t, 256]


def block_weights(model: GPT) -> list[str]:
    """Names of the projection weights inside the blocks (what the demo prunes): 4 per block."""
    return [name for name, p in model.named_parameters() if name.startswith("blocks.") and p.dim() == 2]
