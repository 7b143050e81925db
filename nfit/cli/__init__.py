"""The ``nfit`` command: one module per command, and the only package that imports typer and rich.

Each command parses its options, calls one function of :mod:`nfit.api` (where every
rule about combining options lives, so the Python API refuses what the command line
refuses) and prints. Errors a user can cause (:class:`nfit.errors.NfitError`) become
one line on stderr and exit code 2; ``--debug`` shows the traceback instead.

    app.py        the Typer app, consoles, running a job (errors, warnings, Ctrl-C)
    options.py    options shared by several commands, as Annotated aliases
    progress.py   progress bars, and plain lines when stderr is not a terminal
    fit.py, render.py, info.py, meta_train.py, eval.py   one command each
"""

# isort: off
from nfit.cli.app import app, main
from nfit.cli import fit, render, info, meta_train, eval  # noqa: F401  (each registers its command, in `nfit --help` order)
# isort: on

__all__ = ["app", "main"]
