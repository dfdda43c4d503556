"""The ``pruning-tools`` command line: click and rich live here only.

Each subcommand is a module of this package, imported when it runs (``pruning-tools --help`` imports
neither torch nor any subcommand). Library errors (``ValueError``, ``TypeError``, ...) become one
line on stderr and exit code 1 (``_common.library_errors``).
"""

from __future__ import annotations

import importlib

import click

# name -> (module of this package, one-line help shown by --help without importing the module)
COMMANDS = {
    "bench": ("bench", "Time the mask engine, or (--inference) whole pruned models, from a checkout."),
    "demo": ("demo", "Train the simple CNN on MNIST with gradual pruning; write weights, state, results, plots."),
    "export": ("export", "Store a checkpoint as packed bank-sparse safetensors (values + in-bank indices)."),
    "inspect": ("inspect", "Sparsity and bank balance of every tensor of a checkpoint."),
    "sensitivity": ("sensitivity", "Prune one parameter at a time, one-shot; score; restore; suggest a prune_dict."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when one of them runs or shows its own help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
        return getattr(module, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bank-pruning-tools")
def main() -> None:
    """Training-time pruning, unstructured or bank-balanced, for PyTorch and MXNet."""


if __name__ == "__main__":
    main()
