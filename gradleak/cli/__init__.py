"""Command-line interface: a thin shell over the dataclasses and functions of the Python API.

Each subcommand lives in its own module and registers itself on :data:`cli`.
"""

from __future__ import annotations

import sys

import click

from ..errors import GradleakError
from ..runtime import tune_allocator


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="gradleak")
def cli() -> None:
    """gradleak: measure what an honest-but-curious FL server learns from client updates."""


def _load_commands() -> None:
    # Imported for their side effect of registering subcommands on `cli`.
    from . import attack  # noqa: F401

    for optional in ("labels", "rounds", "sweep", "flower", "utility"):
        try:
            __import__(f"{__name__}.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{optional}":
                raise


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors end with one line on stderr and exit status 2, never a traceback."""
    _load_commands()
    tune_allocator()
    try:
        cli.main(args=argv, prog_name="gradleak", standalone_mode=False)
    except click.exceptions.Abort as exc:
        click.echo("gradleak: aborted", err=True)
        _echo_notes(exc)
        sys.exit(130)
    except click.UsageError as exc:  # one line, like every other user error
        command = f"gradleak {exc.ctx.command_path.split(' ', 1)[1]}" if exc.ctx and " " in exc.ctx.command_path else "gradleak"
        click.echo(f"{command}: error: {exc.format_message()} (see --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except GradleakError as exc:
        click.echo(f"gradleak: error: {exc}", err=True)
        _echo_notes(exc)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        click.echo("gradleak: interrupted", err=True)
        _echo_notes(exc)
        sys.exit(130)


def _echo_notes(exc: BaseException | None) -> None:
    """What the stopped work saved (``add_note``), one line each; click wraps Ctrl-C in Abort, so the
    chain of causes is read too."""
    for _ in range(8):
        if exc is None:
            return
        for note in getattr(exc, "__notes__", []):
            click.echo(f"gradleak: {note}", err=True)
        exc = exc.__cause__ or exc.__context__
