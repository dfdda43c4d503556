"""Trace one real forward and find which tensor slices must lose the same channel.

Why a recorded forward (a ``TorchFunctionMode`` plus module hooks) and not ``torch.fx`` or
``torch.export``: it runs the model's own Python, so data-dependent control flow, Hugging Face
models and hand-written attention trace as they run (``fx`` fails on them); it works under
``no_grad`` (an autograd graph does not exist there) and sees real shapes; and it costs one forward
(``torch.export`` takes seconds to minutes on large models and rewrites ops into ATen pieces). Known
layers (Linear, convolutions, norms, Embedding, ``Conv1D``) are recorded whole by hooks; between
them every torch function is recorded and its effect on channels computed by running the same data
movement on int64 *labels* (``labels.py``). A function this module does not know pins the channels
it touches (they are left dense and reported), so an unknown op can never make a wrong cut.

Tracing changes nothing: the model runs in eval mode under ``no_grad`` with its RNG state, buffers
and training flags restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from . import labels as L

# how each torch function moves channels, by name (torch.*, Tensor methods, torch.nn.functional.*)
IDENTITY = {
    "contiguous", "clone", "detach", "float", "half", "bfloat16", "double", "to", "type", "type_as", "cpu", "cuda",
    "requires_grad_", "relu", "relu_", "gelu", "silu", "silu_", "sigmoid", "tanh", "dropout", "dropout_", "neg",
    "__neg__", "abs", "exp", "sqrt", "rsqrt", "square", "erf", "clamp", "clamp_", "clip", "softplus", "hardswish",
    "hardsigmoid", "hardtanh", "hardtanh_", "relu6", "leaky_relu", "leaky_relu_", "elu", "mish", "sin", "cos", "log",
    "sigmoid_", "tanh_", "gelu_", "nan_to_num", "alpha_dropout", "feature_alpha_dropout", "dropout1d", "dropout2d",
    "dropout3d", "__pos__", "reciprocal", "log1p", "expm1", "selu", "celu", "glu_", "hardswish_",
}  # fmt: skip
ELEMENTWISE = {
    "add", "__add__", "__radd__", "add_", "__iadd__", "sub", "__sub__", "__rsub__", "sub_", "__isub__", "mul",
    "__mul__", "__rmul__", "mul_", "__imul__", "div", "__truediv__", "__rtruediv__", "div_", "__itruediv__",
    "true_divide", "where", "masked_fill", "masked_fill_", "pow", "__pow__", "__rpow__", "maximum", "minimum",
    "addcmul", "addcdiv", "lerp", "fmax", "fmin", "rsub",
}  # fmt: skip
MOVEMENT = {
    "view", "reshape", "permute", "transpose", "t", "flatten", "unflatten", "expand", "expand_as", "unsqueeze",
    "squeeze", "__getitem__", "narrow", "select", "chunk", "split", "unbind", "cat", "concat", "concatenate", "stack",
    "repeat", "repeat_interleave", "index_select", "movedim", "moveaxis", "view_as", "reshape_as", "tensor_split",
    "swapaxes", "swapdims", "split_with_sizes", "hstack", "vstack", "roll", "flip", "tile", "broadcast_to",
}  # fmt: skip
REDUCTIONS = {
    "sum", "mean", "var", "std", "amax", "amin", "max", "min", "norm", "prod", "argmax", "argmin", "logsumexp", "all",
    "any", "var_mean", "std_mean", "nansum", "nanmean", "count_nonzero",
}  # fmt: skip
SHAPE_KEEPING_REDUCTIONS = {"softmax", "log_softmax", "cumsum", "cumprod", "normalize", "_softmax"}
NORMS = {"layer_norm", "rms_norm", "group_norm"}
SPATIAL = {
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices", "interpolate", "upsample",
    "pad", "lp_pool1d", "lp_pool2d", "adaptive_max_pool2d_with_indices", "_max_pool2d",
}  # fmt: skip
MATMULS = {"matmul", "__matmul__", "bmm", "mm"}
OPAQUE_MODULES: tuple[type, ...] = (
    nn.MultiheadAttention,
    nn.modules.conv._ConvTransposeNd,
    nn.RNNBase,
    nn.EmbeddingBag,
    nn.Bilinear,
)
SLICED_BUFFERS = ("running_mean", "running_var")


@dataclass(frozen=True)
class Member:
    """One slice of a tensor that belongs to a channel: ``tensor[index]`` along ``dim`` of parameter
    (or buffer) ``name``. ``role``: ``"out"`` (an output channel of a layer's weight), or ``"other"``."""

    name: str
    dim: int
    index: int
    role: str


@dataclass
class Trace:
    """What one traced forward found (channel ids are ints; see ``labels.Couplings``)."""

    couplings: L.Couplings
    members: dict[int, list[Member]] = field(default_factory=dict)
    untraced: dict[str, str] = field(default_factory=dict)  # module path or op -> why it was left alone
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)  # module path -> weight, kind, positions
    buffers: set[str] = field(default_factory=set)  # member names that are buffers


def _name(func: Any) -> str:
    return str(getattr(func, "__name__", func))


def is_transposed_linear(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (weight ``[in, out]``), found by class name and home."""
    return any(c.__name__ == "Conv1D" and c.__module__.split(".")[0] == "transformers" for c in type(module).__mro__)


def is_leaf(module: nn.Module) -> bool:
    """A module recorded whole by its hooks (its inside is not traced)."""
    known = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    return isinstance(module, known + (nn.Embedding,) + OPAQUE_MODULES) or is_transposed_linear(module)


class Recorder(TorchFunctionMode):
    """Records one forward: labels of activations, members of channels, couplings."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.trace = Trace(L.Couplings())
        self._labels: dict[int, tuple[Tensor, Tensor]] = {}  # id(activation) -> (activation, label)
        self._next = 0
        self._depth = 0  # > 0 inside a leaf module
        self._quiet = 0  # > 0 while the recorder itself computes
        self._path: list[str] = []
        self._names = {id(p): n for n, p in model.named_parameters()}
        self._buffer_names = {id(b): n for n, b in model.named_buffers()}
        self._claims: dict[tuple[str, int, int], int] = {}

    # ---------------------------------------------------------------- labels

    def get(self, t: Any) -> Tensor | None:
        entry = self._labels.get(id(t)) if isinstance(t, Tensor) else None
        return entry[1] if entry is not None and entry[0] is t else None

    def set(self, t: Any, label: Tensor | None) -> None:
        if not isinstance(t, Tensor):
            return
        if label is None or tuple(label.shape) != tuple(t.shape) or not bool((label >= 0).any()):
            self._labels.pop(id(t), None)
            return
        if label.stride() != t.stride():  # same strides as the activation, so views act alike
            with contextlib.suppress(RuntimeError):
                strided = torch.empty_strided(t.shape, t.stride(), dtype=torch.int64, device=label.device)
                label = strided.copy_(label)
        self._labels[id(t)] = (t, label)

    def new_channels(self, count: int) -> Tensor:
        ids = torch.arange(self._next, self._next + count, dtype=torch.int64)
        self._next += count
        return ids

    def claim(self, channel: int, member: Member) -> None:
        """``member`` belongs to ``channel``; a slice claimed by two channels couples them (tied weights)."""
        key = (member.name, member.dim, member.index)
        first = self._claims.get(key)
        if first is None:
            self._claims[key] = channel
            self.trace.members.setdefault(channel, []).append(member)
            return
        if first != channel:
            self.trace.couplings.uf.union(first, channel)  # one slice, listed once; "out" wins over "other"
        if member.role == "out":
            held = self.trace.members[first]
            held[:] = [replace(m, role="out") if (m.name, m.dim, m.index) == key else m for m in held]

    def where(self) -> str:
        return self._path[-1] if self._path else "the model"

    # ---------------------------------------------------------------- torch functions

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._depth or self._quiet:
            return out
        self._quiet += 1
        try:
            self._record(func, args, kwargs, out)
        finally:
            self._quiet -= 1
        return out

    def _record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = _name(func)
        flat, _ = tree_flatten((args, kwargs))
        if not any(self.get(t) is not None for t in flat):
            return
        if name != "__setitem__" and not any(isinstance(t, Tensor) for t in tree_flatten(out)[0]):
            return  # sizes, dtypes, Python numbers: no activation comes out
        reason = f"{name} in {self.where()}"
        c = self.trace.couplings
        first = args[0] if args else None
        if name == "__setitem__":
            self._setitem(args)
        elif name in IDENTITY and isinstance(out, Tensor) and isinstance(first, Tensor) and out.shape == first.shape:
            self.set(out, self.get(first))
        elif name in MOVEMENT:
            self._movement(func, args, kwargs, out, reason)
        elif name in ELEMENTWISE or (name in ("max", "min") and len(args) > 1 and isinstance(args[1], Tensor)):
            self._elementwise(flat, out, reason)
        elif name in REDUCTIONS | SHAPE_KEEPING_REDUCTIONS and isinstance(first, Tensor):
            self._reduction(name, args, kwargs, out, reason)
        elif name in NORMS and isinstance(first, Tensor):
            label = self.get(first)
            if label is not None:
                ndim = len(args[1]) if name != "group_norm" else first.dim() - 1
                c.along(label, range(first.dim() - ndim, first.dim()), f"normalized together by {reason}")
                self.set(out, label)
        elif name in MATMULS or name == "__rmatmul__":
            a, b = (args[1], args[0]) if name == "__rmatmul__" else (args[0], args[1])
            if a.dim() < 2 or b.dim() < 2:
                self._unknown(flat, reason)
                return
            self.set(out, L.matmul_labels(c, self.get(a), self.get(b), a.shape, b.shape, reason))
        elif name == "scaled_dot_product_attention":
            self._attention(args, kwargs, out, reason)
        elif name in SPATIAL and isinstance(first, Tensor):
            self._spatial(name, args, kwargs, out, reason)
        else:
            self._unknown(flat, reason)

    def _unknown(self, flat: list, reason: str) -> None:
        labels = [self.get(t) for t in flat]
        found = [lab for lab in labels if lab is not None]
        for lab in found:
            self.trace.couplings.pin(lab, f"{reason}: an operation the tracer does not know")
        if found:
            self.trace.untraced.setdefault(reason, "an operation the tracer does not know: its channels are kept")

    def _substitute(self, x: Any, fill: bool) -> Any:
        if isinstance(x, Tensor):
            lab = self.get(x)
            if lab is not None:
                return lab
            return L.full_unlabeled(x.shape, x.device) if fill else x
        if isinstance(x, (list, tuple)):
            return type(x)(self._substitute(v, fill) for v in x)
        return x

    def _movement(self, func: Any, args: tuple, kwargs: dict, out: Any, reason: str) -> None:
        name = _name(func)
        if name in ("cat", "concat", "concatenate", "stack", "hstack", "vstack"):
            new_args = (self._substitute(args[0], fill=True), *args[1:])
        elif isinstance(args[0], Tensor) and self.get(args[0]) is not None:
            new_args = (self.get(args[0]), *args[1:])
        else:
            self._unknown(tree_flatten((args, kwargs))[0], reason)
            return
        try:
            labeled = func(*new_args, **kwargs)
        except (RuntimeError, TypeError, ValueError, IndexError):
            self._unknown(tree_flatten((args, kwargs))[0], reason)
            return
        if isinstance(out, Tensor) and isinstance(labeled, Tensor):
            self.set(out, labeled)
        elif isinstance(out, (tuple, list)) and isinstance(labeled, (tuple, list)) and len(out) == len(labeled):
            for o, lab in zip(out, labeled):
                self.set(o, lab)
        else:
            self._unknown(tree_flatten((args, kwargs))[0], reason)

    def _setitem(self, args: tuple) -> None:
        target, index, value = args[0], args[1], args[2]
        base = self.get(target)
        lab = base.clone() if base is not None else L.full_unlabeled(target.shape, target.device)
        written = self.get(value)
        lab[index] = written if written is not None else L.UNLABELED
        self.set(target, lab)

    def _elementwise(self, flat: list, out: Any, reason: str) -> None:
        if not isinstance(out, Tensor):
            self._unknown(flat, reason)
            return
        c = self.trace.couplings
        labels, fixed = [], []
        for t in flat:
            if not isinstance(t, Tensor):
                continue
            lab = self.get(t)
            if lab is not None:
                wide = L.broadcast_label(lab, out.shape)
                if wide is None:
                    self._unknown(flat, reason)
                    return
                labels.append(wide)
            elif t.numel() > 1:
                fixed.append(t.shape)
        merged = c.merge(labels, f"{reason}: combined with an element of no channel")
        for shape in fixed:  # a tensor that cannot be sliced: no element may go alone along its full dims
            c.along(merged, L.fixed_operand_dims(out.shape, shape), f"{reason}: combined with a fixed tensor")
        self.set(out, merged)

    def _reduction(self, name: str, args: tuple, kwargs: dict, out: Any, reason: str) -> None:
        x = args[0]
        lab = self.get(x)
        if lab is None:
            return
        dim = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], Tensor) else None)
        if name == "norm":
            dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
        keepdim = bool(kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False))
        dims = list(range(x.dim())) if dim is None else [dim] if isinstance(dim, int) else list(dim)
        dims = [d % max(1, x.dim()) for d in dims]
        self.trace.couplings.along(lab, dims, f"reduced together by {reason}")
        outs = out if isinstance(out, (tuple, list)) else (out,)
        reduced = lab
        if not (isinstance(out, Tensor) and out.shape == x.shape):
            for d in sorted(dims, reverse=True):
                reduced = reduced.narrow(d, 0, 1) if keepdim else reduced.select(d, 0)
        for o in outs:
            if isinstance(o, Tensor) and o.shape == reduced.shape:
                self.set(o, reduced)

    def _attention(self, args: tuple, kwargs: dict, out: Any, reason: str) -> None:
        q, k, v = (args + (None,) * 3)[:3]
        q = kwargs.get("query", q)
        k, v = kwargs.get("key", k), kwargs.get("value", v)
        lq, lk, lv = self.get(q), self.get(k), self.get(v)
        c = self.trace.couplings
        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        if isinstance(mask, Tensor) and self.get(mask) is not None:
            self._unknown([q, k, v, mask], reason)
            return
        heads, kv_heads = q.shape[-3] if q.dim() >= 3 else 1, k.shape[-3] if k.dim() >= 3 else 1
        if heads != kv_heads:  # grouped-query attention: key/value head j serves query heads j*g .. j*g+g-1
            g = heads // kv_heads
            lk = lk.repeat_interleave(g, dim=-3) if lk is not None else None
            lv = lv.repeat_interleave(g, dim=-3) if lv is not None else None
            k_shape = (*k.shape[:-3], heads, *k.shape[-2:])
            v_shape = (*v.shape[:-3], heads, *v.shape[-2:])
        else:
            k_shape, v_shape = k.shape, v.shape
        k_t = (*k_shape[:-2], k_shape[-1], k_shape[-2])
        lkt = lk.transpose(-2, -1) if lk is not None else None
        scores = L.matmul_labels(c, lq, lkt, q.shape, torch.Size(k_t), reason)
        s_shape = torch.Size((*torch.broadcast_shapes(q.shape[:-2], k_t[:-2]), q.shape[-2], k_t[-1]))
        self.set(out, L.matmul_labels(c, scores, lv, s_shape, torch.Size(v_shape), reason))

    def _spatial(self, name: str, args: tuple, kwargs: dict, out: Any, reason: str) -> None:
        x = args[0]
        lab = self.get(x)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        pad = kwargs.get("pad", args[1] if len(args) > 1 else ())
        channel_pad = name == "pad" and len(pad) > 2 * (x.dim() - 2)
        if lab is None or x.dim() < 3 or channel_pad or any(o.shape[:2] != x.shape[:2] for o in outs):
            self._unknown([x], reason)
            return
        c = self.trace.couplings
        c.along(lab, range(2, x.dim()), f"{reason}: mixes positions")
        per_channel = lab[(slice(None), slice(None)) + (slice(0, 1),) * (x.dim() - 2)]  # [N, C, 1, ...]
        for o in outs:
            self.set(o, per_channel.expand(o.shape))

    # ---------------------------------------------------------------- leaf modules

    def param(self, p: Any) -> str | None:
        return self._names.get(id(p)) if isinstance(p, Tensor) else None

    def buffer(self, b: Any) -> str | None:
        return self._buffer_names.get(id(b)) if isinstance(b, Tensor) else None

    def consume(self, x: Tensor, dim: int, weight: str, weight_dim: int) -> None:
        """``x``'s channels along ``dim`` meet the columns ``weight_dim`` of ``weight``."""
        lab = self.get(x)
        if lab is None:
            return
        d = dim % x.dim()
        self.trace.couplings.along(lab, [i for i in range(x.dim()) if i != d], f"read by {self.where()}")
        columns = lab.movedim(d, -1).reshape(-1, x.shape[d])[0]
        for j, ch in enumerate(columns.tolist()):
            if ch >= 0:
                self.claim(ch, Member(weight, weight_dim, j, "other"))

    def produce(self, y: Tensor, dim: int, members: list[tuple[str | None, int, str]]) -> None:
        """``y``'s channels along ``dim`` are new; channel ``o`` owns slice ``o`` of each ``(name, dim, role)``."""
        d = dim % y.dim()
        ids = self.new_channels(y.shape[d])
        for name, mdim, role in members:
            if name is None:
                continue
            for o, ch in enumerate(ids.tolist()):
                self.claim(ch, Member(name, mdim, o, role))
        shape = [1] * y.dim()
        shape[d] = y.shape[d]
        self.set(y, ids.view(shape).expand(y.shape))

    def per_channel(self, x: Tensor, y: Tensor, members: list[tuple[str | None, str]]) -> None:
        """``y = f(x)`` channel by channel on dim 1 (BatchNorm, depthwise conv): slice ``c`` of every
        member belongs to ``x``'s channel ``c``."""
        lab = self.get(x)
        if lab is None:
            return
        c = self.trace.couplings
        c.along(lab, [i for i in range(x.dim()) if i != 1], f"per-channel layer {self.where()}")
        channels = lab.movedim(1, -1).reshape(-1, x.shape[1])[0]
        for j, ch in enumerate(channels.tolist()):
            if ch >= 0:
                for name, role in members:
                    if name is not None:
                        self.claim(ch, Member(name, 0, j, role))
        shape = [1] * y.dim()
        shape[1] = y.shape[1]
        self.set(y, channels.view(shape).expand(y.shape))

    def pin_inputs(self, tensors: list, why: str) -> None:
        for t in tensors:
            lab = self.get(t)
            if lab is not None:
                self.trace.couplings.pin(lab, why)

    def leaf(self, module: nn.Module, path: str, args: tuple, kwargs: dict, y: Any) -> None:
        """What a leaf module did to the channels (called after its forward)."""
        self._quiet += 1
        try:
            self._leaf(module, path, args, kwargs, y)
        finally:
            self._quiet -= 1

    def _leaf(self, module: nn.Module, path: str, args: tuple, kwargs: dict, y: Any) -> None:
        x = args[0] if args else next(iter(kwargs.values()), None)
        w, b = self.param(getattr(module, "weight", None)), self.param(getattr(module, "bias", None))
        flat = tree_flatten((args, kwargs))[0]
        if isinstance(module, OPAQUE_MODULES) or not isinstance(x, Tensor) or not isinstance(y, Tensor):
            why = f"{type(module).__name__} {path}: a layer the tracer does not cut"
            if isinstance(module, nn.MultiheadAttention):
                why += " (nn.MultiheadAttention ties its inner width to embed_dim)"
            self.pin_inputs(flat, why)
            self.trace.untraced[path] = why
            return
        if isinstance(module, nn.Linear) or is_transposed_linear(module):
            transposed = is_transposed_linear(module)
            if w is not None:
                self.consume(x, -1, w, 0 if transposed else 1)
                self.produce(y, -1, [(w, 1 if transposed else 0, "out"), (b, 0, "other")])
                self.trace.layers[path] = {"weight": w, "kind": "linear", "positions": y.numel() // y.shape[-1]}
        elif isinstance(module, nn.modules.conv._ConvNd):
            assert isinstance(module, nn.modules.conv._ConvNd)
            depthwise = module.groups == module.in_channels == module.out_channels
            if w is None:
                self.pin_inputs(flat, f"{path}: a convolution without a weight parameter")
            elif module.groups == 1:
                self.consume(x, 1, w, 1)
                self.produce(y, 1, [(w, 0, "out"), (b, 0, "other")])
            elif depthwise:
                self.per_channel(x, y, [(w, "out"), (b, "other")])
            else:
                why = f"{path}: grouped convolution (groups={module.groups}, not depthwise): kept whole"
                self.pin_inputs(flat, why)
                self.trace.untraced[path] = why
            if w is not None:
                self.trace.layers[path] = {"weight": w, "kind": "conv", "positions": y.numel() // y.shape[1]}
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            names = [(w, "other"), (b, "other")]
            for attr in SLICED_BUFFERS:
                buf = self.buffer(getattr(module, attr, None))
                if buf is not None:
                    self.trace.buffers.add(buf)
                    names.append((buf, "other"))
            self.per_channel(x, y, names)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            lab = self.get(x)
            if lab is not None:
                ndim = x.dim() - 1 if isinstance(module, nn.GroupNorm) else len(getattr(module, "normalized_shape", ()))
                why = f"normalized together by {type(module).__name__} {path}"
                self.trace.couplings.along(lab, range(x.dim() - ndim, x.dim()), why)
                self.set(y, lab)
        elif isinstance(module, nn.Embedding) and w is not None:
            self.produce(y, -1, [(w, 1, "out")])
        else:
            self.pin_inputs(flat, f"{type(module).__name__} {path}: not handled")


@contextlib.contextmanager
def _unchanged(model: nn.Module) -> Iterator[None]:
    """Run a forward that leaves the model bit-identical: eval mode, no_grad; RNG, buffers and
    training flags restored."""
    flags = {m: m.training for m in model.modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags.items():
            m.training = flag
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers and b.shape == buffers[name].shape:
                    b.copy_(buffers[name])
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def trace(model: nn.Module, example_inputs: Any = None) -> Trace:
    """Run ``model`` once on ``example_inputs`` (a tuple of positional inputs, a dict of keyword
    inputs, or None: no inputs) and return what it found. The model is left bit-identical."""
    recorder = Recorder(model)
    handles = []
    leaves = {m for m in model.modules() if is_leaf(m)}
    inside_leaf: list[bool] = []

    def pre(path: str, module: nn.Module) -> Any:
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            recorder._path.append(path or "the model")
            inside_leaf.append(recorder._depth > 0)
            if module in leaves:
                recorder._depth += 1

        return hook

    def post(path: str, module: nn.Module) -> Any:
        def hook(mod: nn.Module, args: tuple, kwargs: dict, y: Any) -> None:
            nested = inside_leaf.pop()
            if module in leaves:
                recorder._depth -= 1
                if not nested:
                    recorder.leaf(module, path, args, kwargs, y)
            recorder._path.pop()

        return hook

    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(pre(path, module), with_kwargs=True))
        handles.append(module.register_forward_hook(post(path, module), with_kwargs=True))
    if example_inputs is None:
        args, kwargs = (), {}
    elif isinstance(example_inputs, dict):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, tuple):
        args, kwargs = example_inputs, {}
    else:
        raise TypeError(
            f"example_inputs={type(example_inputs).__name__} is not allowed: expected a tuple of positional "
            "inputs, a dict of keyword inputs, or None"
        )
    try:
        with _unchanged(model), recorder:
            output = model(*args, **kwargs)
            recorder._quiet += 1
            outputs = output.values() if hasattr(output, "values") and not isinstance(output, Tensor) else output
            for t in tree_flatten(list(outputs) if not isinstance(outputs, Tensor) else outputs)[0]:
                lab = recorder.get(t)
                if lab is not None:
                    recorder.trace.couplings.pin(lab, "a model output")
    except Exception as error:
        where = recorder._path[-1] if recorder._path else "the model"
        if example_inputs is None and isinstance(error, TypeError) and len(recorder._path) <= 1:
            raise ValueError(
                f"example_inputs=None is not allowed for this model: its forward needs inputs ({error}); pass "
                "example_inputs=(x,) or a dict of keyword inputs"
            ) from error
        raise ValueError(
            f"example_inputs: tracing the model failed in {where} ({type(error).__name__}: {error})"
        ) from error
    finally:
        for h in handles:
            h.remove()
    return recorder.trace
