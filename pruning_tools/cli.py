"""The ``pruning-tools`` command line. Each subcommand lives in its own module."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pruning-tools")
def main() -> None:
    """Training-time pruning, unstructured or bank-balanced, for PyTorch and MXNet."""


from .sensitivity_cli import sensitivity  # noqa: E402

main.add_command(sensitivity)
from .demo import demo  # noqa: E402

main.add_command(demo)
from .inspection import inspect  # noqa: E402

main.add_command(inspect)
from .export_cli import export  # noqa: E402

main.add_command(export)
from .bench import bench  # noqa: E402

main.add_command(bench)

if __name__ == "__main__":
    main()
