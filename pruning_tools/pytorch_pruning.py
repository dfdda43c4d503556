"""PyTorch adapter: finds the parameters, how each is banked, and applies their masks (state in ``pruner``).

>>> import torch
>>> from pruning_tools import pytorch_pruning
>>> model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
>>> prune = pytorch_pruning.Prune(model, 0, 0, 1, {"*.weight": 0.75})
>>> prune.prune()  # one-shot at the first step (sparse_step=0)
>>> layers, total = prune.sparsity()
>>> layers["0.weight"], round(total, 4)
(0.75, 0.75)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed as D
from . import geometry as G
from . import masks as M
from .config import PruneConfig, make_config
from .layer_kinds import is_convolution, is_transposed_linear
from .pruner import STATE_FORMAT, Pruner  # noqa: F401  (STATE_FORMAT re-exported)


def _owned_weights(model: nn.Module, owner: Callable[[nn.Module], bool]) -> set[str]:
    """Names (as ``named_parameters(remove_duplicate=False)`` spells them) of the ``weight`` of every
    module for which ``owner(module)``."""
    return {
        f"{prefix}.weight" if prefix else "weight"
        for prefix, module in model.named_modules(remove_duplicate=False)
        if owner(module) and isinstance(module._parameters.get("weight"), nn.Parameter)
    }


def _out_dims(model: nn.Module) -> dict[str, int]:
    """Parameter name -> dim of output channels, where it is 1: ConvTranspose weights ``[in, out, *kernel]``
    and transformers' ``Conv1D`` weights ``[in, out]`` (names as the model spells them)."""
    transposed = lambda m: isinstance(m, nn.modules.conv._ConvTransposeNd) or is_transposed_linear(m)  # noqa: E731
    return dict.fromkeys(_owned_weights(model, transposed), 1)


def _wrapper_children(model: nn.Module) -> tuple[set[str], set[str]]:
    """Module paths of the model inside a wrapper: ``(torch.compile's "_orig_mod" children,
    DistributedDataParallel / DataParallel "module" children)``."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # imported by torch.compile, else nothing is compiled
    compiled = getattr(eval_frame, "OptimizedModule", ())
    parallel = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    compile_children, parallel_children = set(), set()
    for prefix, module in model.named_modules(remove_duplicate=False):
        if compiled and isinstance(module, compiled):
            compile_children.add(f"{prefix}._orig_mod" if prefix else "_orig_mod")
        elif isinstance(module, parallel):
            parallel_children.add(f"{prefix}.module" if prefix else "module")
    return compile_children, parallel_children


def _spellings(name: str, compile_children: set[str], parallel_children: set[str]) -> tuple[str, str]:
    """``(name without torch.compile's "_orig_mod.", that without DDP's "module." too)``."""
    canonical, plain, path = [], [], ""
    for part in name.split("."):
        path = f"{path}.{part}" if path else part
        if path in compile_children:
            continue
        canonical.append(part)
        if path not in parallel_children:
            plain.append(part)
    return ".".join(canonical), ".".join(plain)


class TorchBridge:
    """The pruner's view of a ``torch.nn.Module``: parameters by dotted name, their shapes, output
    dims and row layouts, read and written in place. Also used by ``sensitivity`` and the parity tests.

    Names are those ``named_parameters()`` reports, except that a ``torch.compile`` wrapper is
    transparent (``0.weight``, not ``_orig_mod.0.weight``). Other spellings of a parameter are
    *aliases* that ``prune_dict`` may use: the wrapped name under ``torch.compile``, the name without
    DDP's ``module.`` prefix (what ``Accelerator.prepare`` users know), and the second name of a
    tied weight (``lm_head.weight`` for GPT-2's ``transformer.wte.weight``).

    Every access looks the parameter up by its path in the model as it is now (a few dict lookups),
    so a parameter replaced after construction (``model.load_state_dict(sd, assign=True)``, a new
    submodule) is the one read, masked and counted; never an orphaned tensor. A path that no longer
    leads to a parameter raises ``RuntimeError``.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model={type(model).__name__} is not allowed: expected a torch.nn.Module")
        self.model = model
        compile_children, parallel_children = _wrapper_children(model)
        self._paths: dict[str, tuple[tuple[str, ...], str]] = {}  # name -> (submodule path, attribute)
        self._aliases: dict[str, str] = {}  # other spelling -> name
        self.spelled: dict[str, str] = {}  # name -> how named_parameters() spells it
        name_of: dict[int, str] = {}  # id(parameter) -> name
        canonical_of: dict[str, str] = {}  # every spelling -> name
        for spelled, p in model.named_parameters(remove_duplicate=False):
            canonical, plain = _spellings(spelled, compile_children, parallel_children)
            if id(p) not in name_of:
                name_of[id(p)] = canonical
                *modules, attribute = spelled.split(".")
                self._paths[canonical] = (tuple(modules), attribute)
                self.spelled[canonical] = spelled
            name = name_of[id(p)]
            for alias in (spelled, canonical, plain):
                canonical_of[alias] = name
                if alias != name:
                    self._aliases.setdefault(alias, name)
        self._out_dims = {canonical_of[n]: dim for n, dim in _out_dims(model).items() if n in canonical_of}
        self._conv_weights = {canonical_of[n] for n in _owned_weights(model, is_convolution) if n in canonical_of}

    def parameter(self, name: str) -> nn.Parameter:
        """The parameter the model holds under ``name`` now."""
        modules, attribute = self._paths[name]
        module: Any = self.model
        try:
            for part in modules:
                module = module._modules[part]
            p = module._parameters[attribute]
        except (KeyError, AttributeError, TypeError):
            p = None
        if p is None:
            raise RuntimeError(
                f"parameter {name!r} is no longer in the model (its module or the parameter was removed): "
                "build a new Prune for the changed model"
            )
        return p

    def not_parameters(self) -> dict[str, str]:
        """Buffers (e.g. BatchNorm running statistics): never pruned, and a prune_dict naming one is refused."""
        return {name: "a buffer (e.g. a BatchNorm running statistic)" for name, _ in self.model.named_buffers()}

    def names(self) -> list[str]:
        """Every parameter's name, in model order."""
        return list(self._paths)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape, in model order."""
        return {name: tuple(self.parameter(name).shape) for name in self._paths}

    def dtypes(self) -> dict[str, str]:
        """Every parameter's dtype name (``"float32"``, ``"bfloat16"``...)."""
        return {name: str(self.parameter(name).dtype).replace("torch.", "") for name in self._paths}

    def out_dims(self) -> dict[str, int]:
        """Parameters whose output channels are not on dim 0 (ConvTranspose and ``Conv1D`` weights: 1)."""
        return dict(self._out_dims)

    def layouts(self, layout: str = "channels_last") -> dict[str, str]:
        """Parameters read with another layout than ``layout`` by default: those with more than 2 dims
        that no convolution owns are rows along their last dim (``geometry.param_layout``)."""
        out = {n: G.param_layout(self.parameter(n).shape, n in self._conv_weights, layout) for n in self._paths}
        return {name: chosen for name, chosen in out.items() if chosen != layout}

    def aliases(self) -> dict[str, str]:
        """Other spellings of parameter names -> the name (see the class docstring)."""
        return dict(self._aliases)

    def is_floating(self, name: str) -> bool:
        """Whether parameter ``name`` holds floating-point values (only those can be pruned)."""
        return self.parameter(name).is_floating_point()

    def prunable(self) -> list[str]:
        """Floating-point parameters with >= 2 dims (the default of a sensitivity sweep)."""
        params = {n: self.parameter(n) for n in self._paths}
        return [n for n, p in params.items() if p.dim() >= 2 and p.is_floating_point()]

    def read(self, name: str) -> Tensor:
        """The parameter itself (no copy)."""
        return self.parameter(name)

    @torch.no_grad()
    def write(self, name: str, value: Tensor) -> None:
        """Overwrite the parameter (bit-exact copy of ``value``)."""
        self.parameter(name).copy_(value)

    @torch.no_grad()
    def apply_mask(self, name: str, mask: Tensor) -> Tensor:
        """Zero the pruned weights in place (of the local shard of a DTensor): exactly ``+0.0``.
        Returns the tensor masked (the parameter, or its local shard)."""
        w = D.local(self.parameter(name))
        if w.shape != mask.shape:
            raise RuntimeError(
                f"parameter {name!r} has shape {list(w.shape)} but its mask {list(mask.shape)}: the model's "
                "parameter was replaced by one of another shape; build a new Prune for the changed model"
            )
        M.apply_mask_(w, mask)
        return w

    def grad(self, name: str) -> Tensor | None:
        """The parameter's ``.grad`` (its local shard for a DTensor), or None."""
        grad = self.parameter(name).grad
        return None if grad is None else D.local(grad)


class Prune(Pruner):
    """Gradual pruning of a PyTorch model, unstructured or bank-balanced, by magnitude or movement.

    Call ``prune()`` after every ``optimizer.step()``. The positional order is the original tool's:
    ``Prune(model, pretrain_step, sparse_step, frequency, prune_dict)`` is
    ``Prune(model, pretrain_step=..., sparse_step=..., frequency=..., prune_dict=...)``. Every argument is
    checked here; a bad one raises ``ValueError`` (or ``TypeError``) naming the argument, the value and
    what is allowed, before any weight is touched. Methods: those of ``pruner.Pruner``.

    Args:
        model: The ``nn.Module`` to prune; it stays vanilla (no hooks, no extra buffers, no renamed
            ``state_dict`` keys). A ``DistributedDataParallel`` wrapper, an ``Accelerator.prepare``d or
            ``torch.compile``d model work too; under FSDP2 ``fully_shard`` each rank holds the masks of its
            shards (``pruning_tools.distributed``).
        pretrain_step: Dense steps (``prune()`` calls) before pruning starts; an int >= 0 (or an
            integral float, ``40.0``).
        sparse_step: Steps over which the target climbs on the cubic curve from the initial to the final
            sparsity; 0 prunes one-shot at step ``pretrain_step + 1``.
        frequency: Masks are recomputed every ``frequency`` steps of the ramp, and always at its last
            step; an int >= 1 (``47.0`` is 47, ``46.8`` an error).
        prune_dict: Which parameters to prune (required, non-empty; only read, never modified):
            ``{name or glob: sparsity}`` with sparsity in [0, 1), or ``{name or glob: {"sparsity": s,
            "balance": ..., "bank_size": ..., "layout": ..., "out_dim": 0 or 1}}`` to override the defaults
            for those parameters (``"out_dim": 1``: a transposed weight ``[in, out]``, banked along dim 0).
            Names as ``model.named_parameters()`` reports them; also accepted: a name without DDP's
            ``module.``, a compiled model's plain names (its ``_orig_mod.`` ones too), and the second name
            of a tied weight, meaning the shared tensor. Keys apply in order, a later key overriding an
            earlier one; an exact name beats a glob; a key that matches nothing is an error listing the
            closest names. Globs that catch parameters with fewer than 2 dims prune them unstructured,
            and one warning lists them.
        restore_sparsity: Start from the zeros already in the weights (fine-tuning a sparse model): they
            become the initial masks, and each parameter's ramp starts at its measured sparsity.
        fix_sparsity: The zeros already in the weights are the masks, forever; no refresh happens
            (implies ``restore_sparsity``). Not ``balance="fix"``, which chooses the pattern.
        balance: The pattern: ``"fix"`` bank-balanced (every bank keeps the same count), ``"none"``
            unstructured (``round(n * (1 - s))`` largest per tensor), ``"global"`` unstructured with one
            threshold across all listed parameters. 1-D parameters asked for ``"fix"`` are pruned
            unstructured.
        prune_device: Where masks are stored and computed: ``"default"`` beside each parameter, or
            ``"cpu"`` (saves accelerator memory; a GPU weight's mask then lies in pinned host memory and
            is copied over on each ``prune()`` without blocking the host).
        bank_size: Weights per bank, an int >= 2 (keyword only); ``bank_size=4`` at sparsity 0.5 is 2:4.
        layout: How a conv weight ``[out, in/groups, *kernel]`` is cut into rows (keyword only):
            ``"channels_last"`` one row per (output channel, kernel position) along the input channels,
            ``"flat"`` ``W[o].flatten()``, ``"last_dim"`` rows along the last dim. Parameters with more
            than 2 dims that no convolution owns are read along their last dim unless ``prune_dict``
            gives them a ``"layout"``; ``ConvTranspose`` and transformers' ``Conv1D`` weights have their
            output channels on dim 1 (found from the module).
        criterion: What a refresh ranks the live weights by (keyword only): ``"magnitude"`` (``|w|``) or
            ``"movement"`` (``-sum w * grad`` accumulated over the steps; ``pruning_tools.criteria``),
            which needs ``prune()`` called while the gradients are still there (after
            ``optimizer.step()``, before ``zero_grad()``).
        structure: ``"none"`` (single weights, as above) or ``"channel"`` (keyword only): whole output
            channels, attention heads and MLP neurons, each with every slice coupled to it; ``Prune(...)``
            is then a ``pruning_tools.structured.StructuredPrune`` and ``pruning_tools.shrink`` removes
            them for real. The ``prune_dict`` value is the fraction of a weight's output channels removed.
        example_inputs: With ``structure="channel"``, the inputs of the one traced forward that finds
            the coupling: a tuple of positional inputs or a dict of keyword inputs (keyword only).
        round_to: With ``structure="channel"``, kept channel counts are multiples of it (keyword only;
            ``round_to=64`` leaves whole banks for ``balance="fix"`` on the shrunk model).
    """

    def __new__(cls, *args: Any, structure: Any = "none", **kwargs: Any) -> Prune:
        if cls is Prune and structure == "channel":
            from .structured.pruner import StructuredPrune

            return super().__new__(StructuredPrune)
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        pretrain_step: int = 0,
        sparse_step: int = 0,
        frequency: int = 100,
        prune_dict: Mapping[str, Any] | None = None,
        restore_sparsity: bool = False,
        fix_sparsity: bool = False,
        balance: str = "fix",
        prune_device: str = "default",
        *,
        bank_size: int = 64,
        layout: str = "channels_last",
        criterion: str = "magnitude",
        structure: str = "none",
        example_inputs: Any = None,
        round_to: int = 1,
    ) -> None:
        if example_inputs is not None:
            raise ValueError(
                f"example_inputs={type(example_inputs).__name__} is not allowed with structure={structure!r}: "
                "it feeds the trace of structure='channel' only"
            )
        bridge = TorchBridge(model)
        self.config: PruneConfig = make_config(
            pretrain_step,
            sparse_step,
            frequency,
            prune_dict,
            restore_sparsity,
            fix_sparsity,
            balance,
            prune_device,
            bank_size,
            layout,
            shapes=bridge.shapes(),
            out_dims=bridge.out_dims(),
            layouts=bridge.layouts(layout) if isinstance(layout, str) else None,
            aliases=bridge.aliases(),
            dtypes=bridge.dtypes(),
            criterion=criterion,
            not_parameters=bridge.not_parameters(),
            structure=structure,
            round_to=round_to,
        )
        if self.config.structure != "none":
            raise TypeError(
                f"structure={structure!r} is built by Prune itself (a StructuredPrune); subclass "
                "pruning_tools.structured.StructuredPrune to customise it"
            )
        for name in self.config.params:
            if D.local(bridge.read(name)).is_meta:
                raise ValueError(
                    f"prune_dict entry {name!r} is on the meta device (a shape without data): build the pruner once "
                    "the model's weights exist (after to_empty() and initialisation, or load_state_dict(assign=True))"
                )
            if not bridge.is_floating(name):
                raise TypeError(
                    f"prune_dict entry {name!r} has dtype {bridge.read(name).dtype}: "
                    "expected a floating-point parameter"
                )
            if self.config.criterion == "movement" and not bridge.read(name).requires_grad:
                raise ValueError(
                    f"criterion='movement' is not allowed for {name!r}: it does not require grad, so it has "
                    "no gradient to score it by (use criterion='magnitude', or leave it out of prune_dict)"
                )
        self._strategy = D.strategy_for({name: bridge.read(name) for name in self.config.params}, self.config.params)
        self._bridge = bridge
        self.model = model
        self._init_state()

    def prepare(self) -> Prune:
        """No-op kept for API parity with the MXNet class (whose parameters initialise lazily)."""
        return self
