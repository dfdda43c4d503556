"""``nn.MultiheadAttention`` with bank-sparse projections.

``BankSparseMultiheadAttention`` computes what ``nn.MultiheadAttention`` computes (same arguments,
masks, ``need_weights``, ``is_causal``, ``batch_first``, unbatched inputs, dropout on the attention
weights in training mode) with its input and output projections as ``BankSparseLinear`` (or dense
``nn.Linear`` for a projection that is not bank-sparse) and the attention itself by
``F.scaled_dot_product_attention``. The fused input projection ``[3E, E]`` stays one packed weight:
self-attention runs it once; cross-attention (query apart from key/value) runs its row blocks.

PyTorch's fused "fast path" of ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` reads the
dense weights directly; ``to_bank_sparse`` turns it off for the layers it converts
(``disable_fused_path``), so they take their regular path through these modules.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .modules import BankSparseLinear, module_tensor, module_weight


def attention_unsupported(mha: nn.MultiheadAttention) -> str | None:
    """Why ``mha`` cannot be converted, or None."""
    if mha.bias_k is not None or mha.bias_v is not None:
        return "add_bias_kv is not supported"
    if mha.add_zero_attn:
        return "add_zero_attn is not supported"
    return None


def _rows(proj: nn.Module, x: Tensor, start: int, stop: int) -> Tensor:
    """Output features ``[start, stop)`` of a projection (a fused ``[3E, E]`` one)."""
    if isinstance(proj, BankSparseLinear):
        return proj.forward_rows(x, start, stop)
    full_bias = module_tensor(proj, "bias")
    bias = None if full_bias is None else full_bias[start:stop]
    return F.linear(x, module_weight(proj)[start:stop], bias)


def _float_mask(mask: Tensor | None, dtype: torch.dtype, name: str) -> Tensor | None:
    """A bool mask (True: not allowed to attend) as an additive float mask; a float mask as is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"{name} of dtype {mask.dtype} is not allowed: expected bool or floating point")
    return mask.to(dtype)


class BankSparseMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with bank-sparse projections; see the module docstring.

    ``in_proj``: the fused projection ``[3E, E]`` (when query, key and value have the embedding size),
    else ``q_proj``, ``k_proj``, ``v_proj`` (``[E, E]``, ``[E, kdim]``, ``[E, vdim]``); ``out_proj``
    ``[E, E]``. Each is a ``BankSparseLinear`` or an ``nn.Linear``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        out_proj: nn.Module,
        in_proj: nn.Module | None = None,
        q_proj: nn.Module | None = None,
        k_proj: nn.Module | None = None,
        v_proj: nn.Module | None = None,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not allowed: expected a multiple of num_heads={num_heads}")
        if (in_proj is None) == (q_proj is None or k_proj is None or v_proj is None):
            raise ValueError("expected either in_proj or all of q_proj, k_proj, v_proj")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        self.in_proj, self.q_proj, self.k_proj, self.v_proj = in_proj, q_proj, k_proj, v_proj
        self.out_proj = out_proj

    @property
    def _qkv_same_embed_dim(self) -> bool:  # what nn.Transformer* read of an attention module
        return self.in_proj is not None

    @property
    def in_proj_bias(self) -> Tensor | None:
        return None if self.in_proj is None else module_tensor(self.in_proj, "bias")

    @classmethod
    def from_module(cls, mha: nn.MultiheadAttention, projections: dict[str, nn.Module]) -> BankSparseMultiheadAttention:
        """From ``mha`` and its converted projections (``{"in_proj" or "q_proj"/"k_proj"/"v_proj",
        "out_proj": module}``); the missing ones are copied as dense ``nn.Linear``."""
        why = attention_unsupported(mha)
        if why:
            raise ValueError(f"mha={mha} is not allowed: {why}")
        e = mha.embed_dim
        bias = mha.in_proj_bias
        dense: dict[str, nn.Module] = {}
        if mha._qkv_same_embed_dim:
            dense["in_proj"] = _linear(mha.in_proj_weight, bias)
        else:
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                part = None if bias is None else bias[i * e : (i + 1) * e]
                dense[name] = _linear(getattr(mha, f"{name}_weight"), part)
        dense["out_proj"] = _linear(mha.out_proj.weight, mha.out_proj.bias)
        chosen = {name: projections.get(name, module) for name, module in dense.items()}
        return cls(e, mha.num_heads, dropout=mha.dropout, batch_first=mha.batch_first, **chosen)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """As ``nn.MultiheadAttention.forward``: ``[L, N, E]`` (``[N, L, E]`` batch first, ``[L, E]``
        unbatched) -> ``(attn_output, attn_weights or None)``."""
        batched = query.dim() == 3
        same = query is key and key is value
        if not batched:  # [L, E] -> [1, L, E]
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # [L, N, E] -> [N, L, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, e = query.shape
        source = key.shape[1]
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint. You may use the Transformer module method "
                "`generate_square_subsequent_mask` to create this mask."
            )
        q, k, v = self._project(query, key, value, same)  # [N, L, E], [N, S, E], [N, S, E]
        heads = lambda t, s: t.reshape(n, s, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = heads(q, length), heads(k, source), heads(v, source)  # [N, H, L or S, D]
        causal_hint = is_causal and key_padding_mask is None and not need_weights
        mask = None if causal_hint else self._mask(attn_mask, key_padding_mask, n, length, source, q.dtype)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # [N, H, L, S]
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            if dropout > 0:
                weights = F.dropout(weights, p=dropout)
            out = weights @ v  # [N, H, L, D]
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal_hint)
            weights = None
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, e))  # [N, L, E]
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            weights = weights.mean(dim=1) if average_attn_weights else weights
            if not batched:
                weights = weights.squeeze(0)
        return out, weights

    def _project(self, query: Tensor, key: Tensor, value: Tensor, same: bool) -> tuple[Tensor, Tensor, Tensor]:
        e = self.embed_dim
        if self.in_proj is None:
            q_proj, k_proj, v_proj = self.q_proj, self.k_proj, self.v_proj
            if q_proj is None or k_proj is None or v_proj is None:
                raise RuntimeError("in_proj is None: expected q_proj, k_proj and v_proj modules, found None")
            return q_proj(query), k_proj(key), v_proj(value)
        if same:
            return self.in_proj(query).split(e, dim=-1)  # one product [N, L, 3E]
        if key is value:
            q = _rows(self.in_proj, query, 0, e)
            k, v = _rows(self.in_proj, key, e, 3 * e).split(e, dim=-1)
            return q, k, v
        return (
            _rows(self.in_proj, query, 0, e),
            _rows(self.in_proj, key, e, 2 * e),
            _rows(self.in_proj, value, 2 * e, 3 * e),
        )

    def _mask(
        self,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        n: int,
        length: int,
        source: int,
        dtype: torch.dtype,
    ) -> Tensor | None:
        """``attn_mask`` ``[L, S]`` or ``[N * H, L, S]`` and ``key_padding_mask`` ``[N, S]`` as one
        additive mask broadcasting to ``[N, H, L, S]``."""
        mask = _float_mask(attn_mask, dtype, "attn_mask")
        if mask is not None:
            if mask.dim() == 2:
                mask = mask.reshape(1, 1, length, source)
            elif mask.dim() == 3:
                mask = mask.reshape(n, self.num_heads, length, source)
            else:
                raise ValueError(
                    f"attn_mask of shape {list(mask.shape)} is not allowed: expected [L, S] or [N * H, L, S]"
                )
        padding = _float_mask(key_padding_mask, dtype, "key_padding_mask")
        if padding is not None:
            padding = padding.reshape(n, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
            f"batch_first={self.batch_first}"
        )


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """A dense ``nn.Linear`` holding copies of ``weight`` ``[out, in]`` and ``bias``."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def disable_fused_path(model: nn.Module, converted: set[str]) -> list[tuple[nn.Module, str, object]]:
    """Turn PyTorch's fused transformer path off for the encoder layers (and encoders) of ``model``
    holding a converted module (names in ``converted``): that path reads dense weights directly.
    Returns ``(module, attribute, previous value)`` of each change (``restore`` undoes them)."""
    changed: list[tuple[nn.Module, str, object]] = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if not any(c == name or c.startswith(prefix) for c in converted):
            continue
        if isinstance(module, nn.TransformerEncoderLayer) and module.activation_relu_or_gelu:
            changed.append((module, "activation_relu_or_gelu", module.activation_relu_or_gelu))
            module.activation_relu_or_gelu = 0  # the fused path's condition; the regular path uses .activation
        elif isinstance(module, nn.TransformerEncoder) and getattr(module, "use_nested_tensor", False):
            changed.append((module, "use_nested_tensor", True))
            module.use_nested_tensor = False
    return changed


def restore(changed: list[tuple[nn.Module, str, object]]) -> None:
    """Undo ``disable_fused_path``."""
    for module, attribute, value in changed:
        setattr(module, attribute, value)


__all__ = ["BankSparseMultiheadAttention", "attention_unsupported", "disable_fused_path", "restore"]
