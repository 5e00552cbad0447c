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
from scaffold.errors import GenerateError, ScaffoldError

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
def validate(
    spec: Path = typer.Argument(..., help="Spec file (YAML).", show_default=False)
) -> None:
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
    format: str = typer.Option(
        "table",
        "--format",
        "-f",
        help="table (text), svg (a picture of the blocks) or json (the plan as data).",
    ),
) -> None:
    """Print every layer with its output shape and parameter count, then the totals; or the
    same as a picture (--format svg) or as data (--format json)."""
    if format not in ("table", "svg", "json"):
        typer.echo(f"error: --format {format}: must be one of table, svg, json", err=True)
        raise typer.Exit(2)
    try:
        plan = _load(spec)
    except ScaffoldError as error:
        raise _fail(error) from None
    if format == "svg":
        from scaffold.draw import render_svg

        typer.echo(render_svg(plan), nl=False)
    elif format == "json":
        import json

        from scaffold.draw import plan_data

        typer.echo(json.dumps(plan_data(plan), indent=2))
    else:
        from scaffold.plan import format_table

        typer.echo(plan.summary())
        typer.echo(format_table(plan, width=width))


@app.command()
def new(
    path: Path = typer.Argument(
        ..., help="Directory to create; its name is the project name.", show_default=False
    ),
    spec: Optional[Path] = typer.Option(
        None, "--spec", "-s", help="Spec file (YAML); no questions asked."
    ),
    defaults: bool = typer.Option(
        False, "--defaults", help="Take every default answer without asking."
    ),
) -> None:
    """Generate a standalone PyTorch project (a git repository) from a spec or from questions."""
    from scaffold.render import check_target, new_project
    from scaffold.spec import check_project_name

    dest = Path(os.path.abspath(path))
    notes: list[str] = []
    try:
        name = check_project_name(dest.name, where="project name (the directory name)")
        check_target(dest)
        data: dict = {"project_name": name}
        if spec is not None:
            from scaffold.builders import plan_from_raw
            from scaffold.spec import load_spec_file

            raw = {**load_spec_file(spec), "project": name}
            plan = plan_from_raw(raw, name)
            for warning in plan.warnings:
                typer.echo(warning.render(), err=True)
            data.update(from_spec=True, spec=raw)
        elif not defaults and not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise GenerateError(
                "no terminal to ask questions on; pass --spec FILE (see examples/), "
                "or --defaults to take every default"
            )
        new_project(dest, data, interactive=spec is None and not defaults, notes=notes)
    except ScaffoldError as error:
        raise _fail(error) from None
    except (KeyboardInterrupt, SystemExit):
        from scaffold import render

        if render.finished["new"] != dest:
            raise  # nothing was left behind
        notes.append("the interrupt came after the project was complete")
    package = name.replace("-", "_")
    typer.echo(f"created {dest}")
    for note in notes:
        typer.echo(f"warning: {note}", err=True)
    typer.echo(f"  cd {path} && pip install -e '.[test]' && pytest")
    typer.echo(f"  python -m {package}.train --epochs 2")


@app.command()
def update(
    path: Path = typer.Argument(Path("."), help="The generated project."),
    spec: Optional[Path] = typer.Option(
        None, "--spec", "-s", help="A changed spec (YAML) for the project."
    ),
) -> None:
    """Take the newest template and/or a changed spec into a project, keeping your edits."""
    from scaffold.render import update_project

    project = path.resolve()
    notes: list[str] = []
    try:
        data: dict = {}
        if spec is not None:
            from scaffold.spec import load_spec_file

            data.update(from_spec=True, spec=load_spec_file(spec))
        tag, conflicts = update_project(project, data, notes=notes)
    except ScaffoldError as error:
        raise _fail(error) from None
    except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C, SIGTERM, SIGHUP
        from scaffold import render

        if render.finished["update"] == project:  # it landed after the update was written
            typer.echo(f"updated {project}; the interrupt came after the update was complete")
            raise typer.Exit(0) from None
        code = stop.code if isinstance(stop, SystemExit) and isinstance(stop.code, int) else 130
        typer.echo(
            f"interrupted: {project} is unchanged (same commit, no file touched); "
            "run `scaffold update` again to update it",
            err=True,
        )
        raise typer.Exit(code) from None
    typer.echo(f"updated {project} to template {tag}; review the changes with `git diff`")
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    if conflicts:
        typer.echo(
            "conflicts (both you and the template changed the same lines; resolve the markers):",
            err=True,
        )
        for name in conflicts:
            typer.echo(f"  {name}", err=True)


@app.command()
def template() -> None:
    """Print the template repository that Copier uses (for plain `copier copy`/`update`)."""
    from scaffold.render import sync_template_repo

    try:
        repo, tag = sync_template_repo()
    except ScaffoldError as error:
        raise _fail(error) from None
    typer.echo(f"{repo}  (newest tag {tag})")


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


def _terminate(signum, frame) -> None:
    """SIGTERM and SIGHUP (a closed terminal) unwind like Ctrl-C, so that a
    half-generated project is removed and an update is not half applied."""
    raise SystemExit(128 + signum)


def main() -> None:
    """Console entry point: run the app, keeping tracebacks away from users."""
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    if (
        hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN
    ):  # not under nohup
        signal.signal(signal.SIGHUP, _terminate)
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
