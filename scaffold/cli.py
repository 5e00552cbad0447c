"""The `scaffold` command line.

One function per command. Errors from the engine and the renderer are
:class:`~scaffold.errors.ScaffoldError` subclasses and become one message on
stderr with exit code 2; nothing here prints a traceback unless
``SCAFFOLD_DEBUG=1`` is set. No command imports torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from scaffold import __version__
from scaffold.errors import ScaffoldError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Turn a short spec of a neural network into a standalone, tested PyTorch project.",
)


def _fail(error: ScaffoldError) -> typer.Exit:
    typer.echo(error.render(), err=True)
    return typer.Exit(error.exit_code)


def _load(spec: Path, project: str | None = None):
    from scaffold.builders import plan_from_file

    plan = plan_from_file(spec, project)
    for warning in plan.warnings:
        typer.echo(warning.render(), err=True)
    return plan


@app.command()
def validate(spec: Path = typer.Argument(..., help="Spec file (YAML).", show_default=False)) -> None:
    """Check a spec: shapes, values and keys. Exit 0 with a summary, or 2 with the first error."""
    try:
        plan = _load(spec)
    except ScaffoldError as error:
        raise _fail(error) from None
    typer.echo(f"ok: {plan.summary()}")


@app.command()
def show(
    spec: Path = typer.Argument(..., help="Spec file (YAML).", show_default=False),
    width: int = typer.Option(100, help="Table width in columns."),
) -> None:
    """Print every layer with its output shape and parameter count, then the totals."""
    from scaffold.plan import format_table

    try:
        plan = _load(spec)
    except ScaffoldError as error:
        raise _fail(error) from None
    typer.echo(plan.summary())
    typer.echo(format_table(plan, width=width))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"scaffold {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Turn a short spec of a neural network into a standalone, tested PyTorch project."""


def main() -> None:
    """Console entry point: run the app, keeping tracebacks away from users."""
    try:
        app()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # an internal error: say so briefly
        if os.environ.get("SCAFFOLD_DEBUG"):
            raise
        typer.echo(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "  this is a bug in scaffold; rerun with SCAFFOLD_DEBUG=1 for the traceback and report it",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
