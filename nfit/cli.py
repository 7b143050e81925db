"""The `nfit` command. The only module that imports typer and rich.

Each command parses its options, calls one library function and prints. Errors a
user can cause (:class:`nfit.errors.NfitError`) become one line on stderr and
exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nfit._version import __version__
from nfit.config import FieldOptions, FitConfig, RenderConfig
from nfit.errors import ConfigError, NfitError
from nfit.fields import SirenConfig

app = typer.Typer(
    help="Turn media files into neural fields, and back.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
_state = {"debug": False}

EXIT_USER_ERROR = 2


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


def _run(job: Callable[[], Any]) -> Any:
    """Run a library call; turn nfit errors (and Ctrl-C) into one line and an exit code."""
    try:
        return job()
    except NfitError as e:
        if _state["debug"]:
            raise
        err.print(f"nfit: error: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        err.print("nfit: interrupted", markup=False)
        raise typer.Exit(130) from None
    except Exception as e:  # a bug, not bad input: still one line unless --debug
        if _state["debug"]:
            raise
        err.print(f"nfit: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
                  markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


class _FitProgress:
    """A rich progress bar per batch: step, loss, PSNR, speed."""

    def __init__(self, enabled: bool):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.2e}  PSNR {task.fields[psnr]:6.2f} dB"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=err,
            disable=not enabled,
        )

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def __call__(self, label: str, steps: int):
        task = self.progress.add_task(label, total=steps, loss=float("nan"), psnr=float("nan"), rate="")

        def on_step(info) -> None:
            elapsed = self.progress.tasks[task].elapsed or 0.0
            rate = f"{info.step / elapsed:6.1f} step/s" if elapsed > 0 else ""
            self.progress.update(task, completed=info.step, loss=info.loss, psnr=info.psnr, rate=rate)

        return on_step


def _fit_outputs(inputs: list[Path], output: Optional[Path], out_dir: Optional[Path]) -> list[Path]:
    if output is not None and out_dir is not None:
        raise ConfigError(None, "give either -o/--output or -O/--out-dir, not both")
    if output is not None:
        if len(inputs) > 1:
            raise ConfigError("-o", "one output file for several inputs: use -O DIR instead")
        return [output]
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(out_dir, "is not a directory")
        out_dir.mkdir(parents=True, exist_ok=True)
        return [out_dir / f"{p.stem}.nf" for p in inputs]
    return [p.with_suffix(".nf") for p in inputs]


@app.command()
def fit(
    inputs: list[Path] = typer.Argument(..., help="Media files to fit.", show_default=False),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output .nf (one input)."),
    out_dir: Optional[Path] = typer.Option(None, "-O", "--out-dir", help="Directory for one .nf per input."),
    steps: int = typer.Option(FitConfig.steps, help="Adam steps."),
    lr: float = typer.Option(FitConfig.lr, help="Adam learning rate."),
    field: str = typer.Option(FieldOptions.name, help="Field: siren or fourier."),
    width: Optional[int] = typer.Option(None, help=f"Hidden width [default: {SirenConfig.width}]."),
    depth: Optional[int] = typer.Option(None, help=f"Linear layers [default: {SirenConfig.depth}]."),
    w0: Optional[float] = typer.Option(None, help=f"SIREN frequency w0 [default: {SirenConfig.w0:g}]."),
    seed: int = typer.Option(FitConfig.seed, help="Seed of the random initialisation."),
    target_psnr: Optional[float] = typer.Option(None, help="Stop a file once its PSNR (dB) reaches this."),
    batch_size: int = typer.Option(FitConfig.batch_size, help="Files of equal shape fitted together."),
    device: str = typer.Option(FitConfig.device, help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Fit neural fields to media files: `nfit fit photo.png -o photo.nf`, or many with -O DIR."""
    from nfit.api import fit_files

    def job():
        outputs = _fit_outputs(inputs, output, out_dir)
        config = FitConfig(steps=steps, lr=lr, seed=seed, target_psnr=target_psnr, batch_size=batch_size, device=device)
        with _FitProgress(enabled=not as_json) as progress:
            return fit_files(inputs, outputs, config, FieldOptions(field, width, depth, w0), progress)

    results = _run(job)
    rows = []
    for (path, nf), src in zip(results, inputs):
        nbytes = path.stat().st_size
        pixels = math.prod(nf.shape)
        rows.append({"input": str(src), "output": str(path), **{k: nf.summary[k] for k in ("psnr", "ssim", "steps", "seconds")},
                     "bytes": nbytes, "bits_per_pixel": round(nbytes * 8 / pixels, 4)})
    if as_json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
        return
    table = Table(title="nfit fit", title_justify="left")
    for col in ("output", "PSNR dB", "SSIM", "steps", "seconds", "bytes", "bpp"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for r in rows:
        ssim = "-" if r["ssim"] is None else f"{r['ssim']:.4f}"
        table.add_row(r["output"], f"{r['psnr']:.2f}", ssim, str(r["steps"]), f"{r['seconds']:.1f}",
                      f"{r['bytes']:,}", f"{r['bits_per_pixel']:.2f}")
    out.print(table)


@app.command()
def render(
    file: Path = typer.Argument(..., help="A .nf file.", show_default=False),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output image (.png or .jpg)."),
    res: Optional[int] = typer.Option(RenderConfig.res, help="Longest side in pixels; aspect ratio kept."),
    width: Optional[int] = typer.Option(RenderConfig.width, help="Output width (with --height, or alone)."),
    height: Optional[int] = typer.Option(RenderConfig.height, help="Output height (with --width, or alone)."),
    bit_depth: Optional[int] = typer.Option(RenderConfig.bit_depth, help="8 or 16 (PNG) [default: the source's]."),
    quality: int = typer.Option(RenderConfig.quality, help="JPEG quality."),
    device: str = typer.Option(RenderConfig.device, help="auto, cpu or cuda."),
) -> None:
    """Decode a .nf file at its native size or any other: `nfit render photo.nf --res 1024 -o big.png`."""
    from nfit.api import load
    from nfit.render import render_to_file

    def job():
        if res is not None and (width is not None or height is not None):
            raise ConfigError(None, "give --res or --width/--height, not both")
        nf = load(file)
        target = output if output is not None else file.with_suffix(".png")
        return render_to_file(nf, target, res=res, width=width, height=height, bit_depth=bit_depth,
                              quality=quality, device=device)

    path, shape = _run(job)
    err.print(f"wrote {path} ({' x '.join(map(str, reversed(shape)))})", highlight=False)


@app.command()
def info(
    file: Path = typer.Argument(..., help="A .nf file.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Describe a .nf file: modality, shape, field, parameters, bytes, how it was fitted."""
    from nfit.api import info as info_

    data = _run(lambda: info_(file))
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    fit_ = data["fit"]
    rows = [
        ("file", data["file"]),
        ("format version", str(data["format_version"])),
        ("modality", data["modality"]),
        ("shape", " x ".join(map(str, data["shape"])) + f", {data['channels']} channel(s), {data['bit_depth']}-bit source"),
        ("source", str(data["source"])),
        ("field", f"{data['field']['name']} " + json.dumps(data["field"]["config"])),
        ("parameters", f"{data['parameters']:,}"),
        ("bytes", f"{data['bytes']:,} ({data['bits_per_sample']:.2f} bits per pixel)"),
        ("init", json.dumps(data["init"])),
        ("fit", ", ".join(f"{k}={v}" for k, v in fit_.items())),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)


def main() -> None:
    app(prog_name="nfit")


if __name__ == "__main__":
    sys.exit(main())
