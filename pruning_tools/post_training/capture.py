"""Running the calibration data: forward passes, hooks that turn a layer's inputs into Hessians, and
the block structure that lets one-shot pruning go block by block.

Nothing here chooses a mask or writes a weight. Hooks are removed when a pass ends, whatever happens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .layers import Source

Forward = Callable[[nn.Module, Any], Any]


class Stop(Exception):
    """Raised by a hook to end a forward pass early (caught by ``run``)."""


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a dict, ``model(*batch)`` for a tuple or list, else ``model(batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def as_batches(calibration: Any, custom_forward: bool) -> list:
    """The calibration batches as a list (read once: a generator is consumed here).

    Refuses a bare tensor or dict (one batch, not an iterable of batches), a non-iterable, an empty
    or exhausted iterable, and (without a custom ``forward``) batches that are not a tensor, a tuple
    or list, or a dict.
    """
    if isinstance(calibration, (Tensor, Mapping, str, bytes)):
        raise TypeError(
            f"calibration={type(calibration).__name__} is not allowed: expected an iterable of batches "
            "(e.g. a DataLoader, a list of tensors, or tokens.split(8))"
        )
    try:
        batches = list(calibration)
    except TypeError as error:
        raise TypeError(
            f"calibration={type(calibration).__name__} is not allowed: expected an iterable of batches ({error})"
        ) from error
    if not batches:
        raise ValueError(
            "calibration yielded no batch (an empty or already exhausted iterable): expected at least one batch"
        )
    if not custom_forward:
        for i, batch in enumerate(batches):
            if not isinstance(batch, (Tensor, tuple, list, Mapping)):
                raise TypeError(
                    f"calibration batch {i} is a {type(batch).__name__}: expected a tensor, a tuple or a dict "
                    "of tensors (or pass forward=callable(model, batch))"
                )
    return batches


def run(model: nn.Module, batches: Iterable, forward: Forward) -> None:
    """Every batch through ``forward(model, batch)``; a ``Stop`` from a hook ends that batch's pass.
    Any other error becomes a ``ValueError`` naming the batch."""
    for i, batch in enumerate(batches):
        try:
            forward(model, batch)
        except Stop:
            continue
        except Exception as error:  # the user's model and forward raise anything
            raise ValueError(
                f"calibration batch {i} cannot be consumed by the model: {type(error).__name__}: {error}"
            ) from error


def tensor_bytes(value: Any, seen: set[int] | None = None) -> int:
    """Bytes of the distinct tensors inside ``value`` (tuples, lists, dicts searched)."""
    seen = set() if seen is None else seen
    if isinstance(value, Tensor):
        key = value.untyped_storage().data_ptr() if value.numel() else id(value)
        if key in seen:
            return 0
        seen.add(key)
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v, seen) for v in value)
    return 0


@dataclass
class Memory:
    """Bytes of what one-shot pruning holds at once (Hessians and cached block inputs) and the peak."""

    held: int = 0
    peak: int = 0

    def change(self, nbytes: int) -> None:
        self.held += nbytes
        self.peak = max(self.peak, self.held)


@dataclass
class Hessians:
    """Per source: ``sum x x^T`` over every feature row (``[D, D]``, float32, or float64 for float64
    inputs), the row count, and whether a non-finite input was seen."""

    memory: Memory
    sums: dict[str, Tensor] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    nonfinite: set[str] = field(default_factory=set)

    def add(self, key: str, x: Tensor) -> None:
        x = x.detach().to(torch.promote_types(x.dtype, torch.float32))  # [n, D], float64 stays
        if not bool(torch.isfinite(x).all()):
            self.nonfinite.add(key)
            return
        if key not in self.sums:
            self.sums[key] = torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype, device=x.device)
            self.memory.change(self.sums[key].numel() * self.sums[key].element_size())
        self.sums[key].addmm_(x.T, x)
        self.rows[key] = self.rows.get(key, 0) + x.shape[0]

    def release(self) -> None:
        self.memory.change(-sum(h.numel() * h.element_size() for h in self.sums.values()))
        self.sums.clear()


@contextmanager
def capturing(modules: Mapping[str, nn.Module], sources: Sequence[Source], hessians: Hessians) -> Iterator[None]:
    """Feed every source's feature rows into ``hessians`` while the block runs. A module's own
    recomputations (the attention output of ``nn.MultiheadAttention``) are not counted again."""
    by_module: dict[str, list[Source]] = {}
    for source in sources:
        by_module.setdefault(source.module_name, []).append(source)
    busy: set[str] = set()
    handles = []

    def make_hook(name: str, own: list[Source]) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if name in busy:
                return
            busy.add(name)
            try:
                for source in own:
                    hessians.add(source.key, source.features(args, kwargs, output))
            finally:
                busy.discard(name)

        return hook

    try:
        for name, own in by_module.items():
            handles.append(modules[name].register_forward_hook(make_hook(name, own), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------- blocks


def find_blocks(model: nn.Module, layer_modules: Iterable[str]) -> list[str]:
    """The children of the ``nn.ModuleList`` / ``nn.Sequential`` (at least 2 distinct children)
    holding the most of ``layer_modules``; ``[]`` when none holds any."""
    layers = list(layer_modules)
    best: list[str] = []
    best_count = 0
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
            continue
        children = [f"{name}.{key}" if name else key for key, _ in module.named_children()]
        if len({id(child) for child in module.children()}) != len(children):
            continue  # one module listed twice: not a chain of distinct blocks
        count = sum(any(inside(layer, child) for child in children) for layer in layers)
        if count > best_count:
            best, best_count = children, count
    return best


def inside(module_name: str, block: str) -> bool:
    """Whether ``module_name`` is ``block`` or one of its descendants."""
    return module_name == block or module_name.startswith(block + ".")


@dataclass
class Trace:
    """What one forward pass on the first batch showed: the order in which watched modules were first
    called, how often, and each block's first inputs and output."""

    order: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    block_io: dict[str, tuple[tuple, dict, Any]] = field(default_factory=dict)


def trace(model: nn.Module, batch: Any, forward: Forward, watched: Sequence[str], blocks: Sequence[str]) -> Trace:
    """Run ``batch`` once, recording call order and block inputs/outputs (nothing is written)."""
    modules = dict(model.named_modules())
    seen = Trace()
    handles = []
    pending: dict[str, tuple[tuple, dict]] = {}

    def pre(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if name not in seen.calls:
                seen.order.append(name)
                if name in blocks:
                    pending[name] = (args, kwargs)
            seen.calls[name] = seen.calls.get(name, 0) + 1

        return hook

    def post(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if name in pending and name not in seen.block_io:
                inputs, options = pending.pop(name)
                seen.block_io[name] = (inputs, options, output)

        return hook

    try:
        for name in dict.fromkeys([*watched, *blocks]):
            handles.append(modules[name].register_forward_pre_hook(pre(name), with_kwargs=True))
        for name in blocks:
            handles.append(modules[name].register_forward_hook(post(name), with_kwargs=True))
        run(model, [batch], forward)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def first(output: Any) -> Any:
    """A block's hidden state: its output, or the first element of a tuple/list output."""
    return output[0] if isinstance(output, (tuple, list)) and output else output


def same(a: Any, b: Any) -> bool:
    """Equal structure and values (tensors compared exactly)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (
            isinstance(a, Tensor)
            and isinstance(b, Tensor)
            and (a is b or (a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))))
        )
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    try:
        return a is b or bool(a == b)
    except Exception:  # objects whose == is not a bool
        return False


def is_chain(seen: Trace, blocks: Sequence[str]) -> bool:
    """Whether each block ran once and took the previous block's output as its first argument, with
    the same other arguments as the first block: then block inputs can be carried from one block to
    the next without running the rest of the model."""
    if not blocks or any(seen.calls.get(b) != 1 or b not in seen.block_io for b in blocks):
        return False
    args0, kwargs0, _ = seen.block_io[blocks[0]]
    if not args0 or not isinstance(args0[0], Tensor):
        return False
    for previous, block in zip(blocks, blocks[1:]):
        args, kwargs, _ = seen.block_io[block]
        if not args or not same(args[0], first(seen.block_io[previous][2])):
            return False
        if not same(args[1:], args0[1:]) or not same(kwargs, kwargs0):
            return False
    return True


def block_inputs(model: nn.Module, batches: Sequence, forward: Forward, block: nn.Module) -> list[tuple[tuple, dict]]:
    """The inputs ``(args, kwargs)`` of ``block`` for every batch; each pass stops there."""
    recorded: list[tuple[tuple, dict]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        recorded.append((args, dict(kwargs)))
        raise Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run(model, batches, forward)
    finally:
        handle.remove()
    return recorded


__all__ = [
    "Hessians",
    "Memory",
    "Stop",
    "Trace",
    "as_batches",
    "block_inputs",
    "capturing",
    "default_forward",
    "find_blocks",
    "first",
    "inside",
    "is_chain",
    "run",
    "same",
    "tensor_bytes",
    "trace",
]
