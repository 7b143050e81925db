"""``nfit eval``: PSNR and SSIM after each test-time step from initialisations, over a folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
from rich.table import Table

from nfit.api import adapt_config, compare
from nfit.cli.app import app, err, out, run, say
from nfit.cli.options import FIELD_CONFIG_HELP, FIELD_HELP, MODALITY_HELP, Device, field_options
from nfit.cli.progress import progress_display
from nfit.config import DEFAULT_SAMPLE_RATE, AdaptConfig, DataConfig, FieldOptions


@app.command("eval")
def eval_(
    inits: list[str] = typer.Argument(
        ..., help="Init files or run directories, or 'random' for the baseline; several are compared.", show_default=False),
    data: Path = typer.Argument(..., help="Folder of signals to fit.", show_default=False),
    optimizer: str = typer.Option(AdaptConfig.optimizer, help="sgd (re-scaled and plain) or adam (Meta-SparseINR's protocol)."),
    steps: Optional[int] = typer.Option(
        None, help=f"Test-time steps K [default: SGD {AdaptConfig.steps}, Adam {AdaptConfig.adam_steps}]."),
    lr: Optional[float] = typer.Option(None, help=f"Step size [default: SGD {AdaptConfig.lr:g}, Adam {AdaptConfig.adam_lr:g}]."),
    gamma: float = typer.Option(AdaptConfig.gamma, help="Fraction of points that sets the re-scaled step."),
    density: Optional[float] = typer.Option(None, help="Sparse runs: evaluate the level nearest this density."),
    batch_size: int = typer.Option(AdaptConfig.batch_size, help="Signals fitted together."),
    modality: Optional[str] = typer.Option(None, help="Random baseline: " + MODALITY_HELP),
    res: Optional[int] = typer.Option(None, help="Random baseline: image or video frame side [default: as meta-train]."),
    sample_rate: Optional[int] = typer.Option(
        None, help=f"Random baseline: audio sample rate [default: {DEFAULT_SAMPLE_RATE}].", min=1),
    duration: float = typer.Option(DataConfig.duration, help="Random baseline: audio seconds."),
    frames: int = typer.Option(DataConfig.frames, help="Random baseline: video frames."),
    tile: Optional[int] = typer.Option(
        None, help="Random baseline: fit whole files in tiles of this size [default: a tile initialisation's].", min=1),
    field: str = typer.Option(FieldOptions.name, help="Random baseline: " + FIELD_HELP),
    width: Optional[int] = typer.Option(None, help="Random baseline: hidden width."),
    depth: Optional[int] = typer.Option(None, help="Random baseline: linear layers."),
    w0: Optional[float] = typer.Option(None, help="Random baseline: SIREN w0."),
    field_config: Optional[str] = typer.Option(None, help="Random baseline: " + FIELD_CONFIG_HELP),
    seed: int = typer.Option(0, help="Random baseline: seed."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N files."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable file."),
    device: Device = AdaptConfig.device,
    as_json: bool = typer.Option(False, "--json", help="Print the report(s) as JSON on stdout."),
) -> None:
    """PSNR and SSIM after each of K steps from an initialisation, over a folder: `nfit eval RUN ./test`.

    Several initialisations are compared on the same files, e.g. Meta-SparseINR against its
    baselines: `nfit eval SPARSE RANDOM_PRUNED NARROW random ./test --optimizer adam --density 0.1`.

    A tile initialisation (meta-train --tile) fits whole files at their own size tile by tile,
    and the PSNR is of each whole file; "random" beside it fits random tiles of the same size.
    """
    def job():
        data_config = DataConfig(modality=modality, res=res, sample_rate=sample_rate, duration=duration, frames=frames,
                                 tile=tile)
        config = adapt_config({}, steps, lr, gamma, True, optimizer, batch_size, device)
        with progress_display(TextColumn("[bold]eval {task.description}"), BarColumn(), MofNCompleteColumn(),
                              enabled=not as_json) as bar:

            def on_start(init: str):
                task = bar.add_task(init, total=None)
                return lambda n: bar.advance(task, n)

            return compare(inits, data, config=config, data_config=data_config, density=density, on_start=on_start,
                           field_options=field_options(field, width, depth, w0, field_config), seed=seed, limit=limit,
                           strict=strict, warn=lambda m: say(f"nfit: warning: {m}"))

    reports = run(job)
    if as_json:
        data_ = [r.to_json() for r in reports]
        print(json.dumps(data_[0] if len(data_) == 1 else data_, indent=2))
        return
    for report in reports:
        _print_eval(report)
    if len(reports) > 1:
        _print_comparison(reports)
    if reports[0].bad_files:
        err.print(f"{reports[0].bad_files} unreadable file(s) skipped", highlight=False)


def _print_eval(report) -> None:
    shape = "x".join(map(str, report.shape))
    table = Table(title=f"nfit eval {report.init}: {report.signals} signals at {shape}", title_justify="left")
    table.add_column("step", justify="right")
    for name in report.results:
        table.add_column(f"PSNR {name}", justify="right")
        table.add_column(f"SSIM {name}", justify="right")
    for k in range(report.steps + 1):
        row = [str(k)]
        for res_ in report.results.values():
            row.append(f"{res_['psnr_mean'][k]:.2f} ± {res_['psnr_std'][k]:.2f}")
            row.append("-" if res_["ssim_mean"] is None else f"{res_['ssim_mean'][k]:.4f} ± {res_['ssim_std'][k]:.4f}")
        table.add_row(*row)
    out.print(table)


def _print_comparison(reports) -> None:
    """One row per initialisation: size of what a fitted file stores, and quality after the last step."""
    table = Table(title=f"after {reports[0].steps} steps", title_justify="left")
    for col in ("init", "density", "values"):
        table.add_column(col, justify="left" if col == "init" else "right")
    names = list(reports[0].results)
    for name in names:
        table.add_column(f"PSNR {name}", justify="right")
    for r in reports:
        table.add_row(r.init, f"{r.density:.4f}", f"{r.values:,}",
                      *(f"{r.results[n]['psnr_mean'][-1]:.2f}" if n in r.results else "-" for n in names))
    out.print(table)
