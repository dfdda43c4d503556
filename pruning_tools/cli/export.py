"""``pruning-tools export``: a checkpoint to the packed bank-sparse safetensors format."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..config import LAYOUTS
from ._common import Fraction, Written, console, library_errors, output_file, printable, shown

if TYPE_CHECKING:
    from rich.console import Console
    from torch import Tensor

    from ..export import ExportReport


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Equal shape, dtype and bits (negative zeros read as +0.0: they are stored as zeros)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    import torch

    from ..export import BITS_VIEW

    if not a.is_floating_point():
        return torch.equal(a, b)
    view = BITS_VIEW[a.element_size()]
    canon = lambda t: torch.where(t == 0, torch.zeros_like(t), t).view(view)  # noqa: E731
    return torch.equal(canon(a), canon(b))


def _pruner_specs(path: Path, tensors: dict) -> dict:
    from ..pruner import pruned_specs

    try:
        specs = pruned_specs(path)
    except (ValueError, KeyError, TypeError) as exc:  # not a state, or a damaged one
        raise click.BadParameter(f"{path} is not a pruner state ({exc})", param_hint="--pruner-state") from exc
    except OSError as exc:
        raise click.BadParameter(f"{path} cannot be read ({exc})", param_hint="--pruner-state") from exc
    matched = {name: spec for name, spec in specs.items() if name in tensors}
    if specs and not matched:
        raise click.BadParameter(
            f"none of its parameters ({printable(sorted(specs)[:3])}...) is a tensor of the checkpoint; check --prefix",
            param_hint="--pruner-state",
        )
    return matched


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--bank-size", default=64, show_default=True, type=click.IntRange(min=2), help="Weights per bank.")
@click.option(
    "--layout",
    default="channels_last",
    show_default=True,
    type=click.Choice(LAYOUTS),
    help="How N-D weights are read as bank rows (conv: channels_last or flat; other N-D: last_dim).",
)
@click.option(
    "--transposed",
    multiple=True,
    metavar="GLOB",
    help="Tensors stored [in, out] (output dim 1, e.g. GPT-2 Conv1D: '*.c_attn.weight'); repeatable.",
)
@click.option(
    "--sparsity",
    type=Fraction(),
    default=None,
    help="Target the tensors were pruned to: bank budgets as in `check_banks` (default: each tensor's "
    "measured sparsity).",
)
@click.option(
    "--prefix",
    default="",
    help="Export only tensors whose (dotted) name starts with this, "
    "stripped, e.g. 'model.' for {'model': state_dict, ...}.",
)
@click.option(
    "--pruner-state",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A pruner state (Prune.save's .safetensors, or Prune.state_dict() saved with torch.save): "
    "bank size, layout, output dim and target of each pruned tensor.",
)
@click.option(
    "--dense-fallback", is_flag=True, help="Store a sparse tensor that is not bank-balanced dense instead of failing."
)
@click.option(
    "--verify/--no-verify", default=True, show_default=True, help="Reload the file and compare every tensor bit by bit."
)
@library_errors
def export(
    checkpoint: Path,
    out: Path,
    bank_size: int,
    layout: str,
    transposed: tuple[str, ...],
    sparsity: float | None,
    prefix: str,
    pruner_state: Path | None,
    dense_fallback: bool,
    verify: bool,
) -> None:
    """Store CHECKPOINT (.pt/.pth/.bin state_dict or .safetensors) as packed OUT (.safetensors).

    Each sparse bank-balanced tensor becomes values [rows, banks, k] + in-bank indices (uint8 for
    banks up to 256); everything else stays dense. Prints the size against a dense safetensors file.
    OUT must differ from CHECKPOINT and from --pruner-state; an existing OUT is replaced, and said so.
    """
    _check_out(out, checkpoint, pruner_state)
    written = Written()
    tensors = _selected_tensors(checkpoint, prefix)
    out_dims, specs = _export_specs(tensors, transposed, sparsity, pruner_state)
    report = _save(tensors, out, written, bank_size, layout, out_dims, dense_fallback, specs)
    out_console = console()
    _print_report(out_console, report, tensors, checkpoint, out)
    if verify:
        _verify(out_console, out, tensors)
    written.report()


def _check_out(out: Path, checkpoint: Path, pruner_state: Path | None) -> None:
    """Refuse an OUT that is not a writable .safetensors file or that is one of the inputs."""
    output_file(out, "OUT")
    if out.suffix.lower() != ".safetensors":
        raise click.BadParameter(
            f"{out} has suffix {out.suffix!r}: a packed file is a .safetensors file", param_hint="OUT"
        )
    for source, what in ((checkpoint, "CHECKPOINT"), (pruner_state, "--pruner-state")):
        if source is not None and out.exists() and out.samefile(source):
            raise click.BadParameter(f"{out} is also {what}: writing it would replace its input", param_hint="OUT")


def _selected_tensors(checkpoint: Path, prefix: str) -> dict:
    """The checkpoint's tensors whose names start with ``prefix``, the prefix stripped; never none."""
    from ..checkpoints import load_tensors

    tensors = load_tensors(checkpoint)
    if prefix:
        tensors = {name[len(prefix) :]: t for name, t in tensors.items() if name.startswith(prefix)}
    if not tensors:
        raise click.BadParameter(
            f"no tensor in {checkpoint} starts with {prefix!r}" if prefix else f"{checkpoint} holds no tensor",
            param_hint="--prefix" if prefix else "CHECKPOINT",
        )
    return tensors


def _export_specs(
    tensors: dict, transposed: tuple[str, ...], sparsity: float | None, pruner_state: Path | None
) -> tuple[dict[str, int], dict]:
    """Output dims of the --transposed tensors, and the per-tensor specs of --sparsity and --pruner-state."""
    import fnmatch

    out_dims = {n: 1 for n, t in tensors.items() if t.dim() >= 2 and any(fnmatch.fnmatchcase(n, g) for g in transposed)}
    specs = {name: {"sparsity": sparsity} for name in tensors} if sparsity is not None else {}
    if pruner_state is not None:
        specs.update(_pruner_specs(pruner_state, tensors))
    return out_dims, specs


def _save(
    tensors: dict,
    out: Path,
    written: Written,
    bank_size: int,
    layout: str,
    out_dims: dict[str, int],
    dense_fallback: bool,
    specs: dict,
) -> ExportReport:
    """Write the packed file; a tensor that is not bank-balanced is an error saying what to pass."""
    from ..export import NotBankBalancedError, save_packed

    try:
        written.before(out)
        return save_packed(
            tensors,
            out,
            bank_size=bank_size,
            layout=layout,
            out_dims=out_dims,
            dense_fallback=dense_fallback,
            specs=specs,
        )
    except NotBankBalancedError as e:
        raise click.ClickException(
            f"{e}. Pass the pruner's settings with --pruner-state, check --bank-size/--layout, "
            "or store it dense with --dense-fallback."
        ) from e


def _print_report(out_console: Console, report: ExportReport, tensors: dict, checkpoint: Path, out: Path) -> None:
    """A table of how each tensor is stored, then the sizes against a dense safetensors file."""
    from rich.table import Table

    table = Table("tensor", "shape", "stored as", "bytes", title=f"{shown(checkpoint)} → {shown(out)}")
    for name, p in report.packed.items():
        tail = f" + tail {p.tail_k}/{p.row_len % p.bank_size}" if p.row_len % p.bank_size else ""
        how = f"packed {p.k}/{p.bank_size}{tail}, {str(p.indices.dtype).replace('torch.', '')}"
        table.add_row(shown(name), str(list(p.shape)), how, f"{p.nbytes():,}")
    for name in report.dense:
        how = "dense (not bank-balanced)" if name in report.fallback else "dense"
        t = tensors[name]
        table.add_row(shown(name), str(list(t.shape)), how, f"{t.numel() * t.element_size():,}")
    out_console.print(table)
    out_console.print(
        f"dense safetensors: {_size(report.dense_bytes)}, packed: {_size(report.packed_bytes)}, "
        f"ratio: {report.ratio:.4f}"
    )


def _verify(out_console: Console, out: Path, tensors: dict) -> None:
    """Reload OUT and compare every tensor bit by bit with the checkpoint's."""
    import torch

    from ..export import load_packed

    back = load_packed(out)
    wrong = sorted(n for n, t in tensors.items() if not _same_bits(back.get(n, torch.empty(0)), t.detach().cpu()))
    if wrong:
        raise click.ClickException(f"{out}: rebuilt tensors differ from the checkpoint: {wrong}")
    out_console.print(f"verified: all {len(tensors)} tensors rebuilt bit-exactly (zeros as +0.0)")
