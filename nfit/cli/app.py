"""The Typer application, its consoles, and how a command runs: every command module
registers on :data:`app` and runs its library call through :func:`run`, which turns
nfit's typed errors (and Ctrl-C) into one line and an exit code."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from nfit._version import __version__
from nfit.device import flush_denormals
from nfit.errors import NfitError, NfitWarning

app = typer.Typer(
    help="Turn media files into neural fields, and back.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: ...]" literally; markup would swallow it
)
out = Console()
err = Console(stderr=True)
_state: dict[str, Any] = {"debug": False, "warned": set()}

EXIT_USER_ERROR = 2
EXIT_SOME_FAILED = 3  # many files: some failed, every other one was written
EXIT_INTERRUPTED = 130


def _version(value: bool) -> None:
    if value:
        print(f"nfit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (nfit.errors.NfitWarning and others) as one line each, each said once."""
    text = str(message)
    if text not in _state["warned"]:
        _state["warned"].add(text)
        err.print(f"nfit: warning: {text}", markup=False, highlight=False, soft_wrap=True)


def run(job: Callable[[], Any]) -> Any:
    """Run a library call; turn nfit errors (and Ctrl-C) into one line and an exit code.

    An OSError that names a file (a read-only folder, a path through a file) is about a
    path the user gave: one line and exit code 2, like every other bad path."""
    _state["warned"] = set()  # each warning once per command
    try:
        with warnings.catch_warnings(), flush_denormals():
            warnings.simplefilter("always", NfitWarning)
            warnings.showwarning = _show_warning
            return job()
    except NfitError as e:
        if _state["debug"]:
            raise
        err.print(f"nfit: error: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except OSError as e:
        if _state["debug"]:
            raise
        if e.filename is None:
            internal_error(e)
        err.print(f"nfit: error: {e.filename}: {e.strerror or e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        err.print("nfit: interrupted", markup=False)
        raise typer.Exit(130) from None
    except Exception as e:  # a bug, not bad input: still one line unless --debug
        if _state["debug"]:
            raise
        internal_error(e)


def internal_error(e: Exception) -> None:
    err.print(f"nfit: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
              markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1) from None


def say(text: str) -> None:
    """One line on stderr, as it is: no markup, no highlighting, no wrapping."""
    err.print(text, markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    app(prog_name="nfit")
