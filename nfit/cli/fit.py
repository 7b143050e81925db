"""``nfit fit``: media files (or folders of them) into .nf files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from nfit.api import fit_paths
from nfit.cli.app import EXIT_SOME_FAILED, app, err, out, run, say
from nfit.cli.options import (
    W0,
    Depth,
    Device,
    Field,
    FieldConfig,
    Json,
    Modality,
    Overlap,
    Tile,
    TileFrames,
    Width,
    field_options,
)
from nfit.cli.progress import FitProgress
from nfit.config import (
    CODING_BITS,
    CODING_LOSS_DB,
    LATENT_BUDGET_BPP,
    LATENT_FIT,
    TILE_FIT,
    AdaptConfig,
    FieldOptions,
    FitConfig,
    SignalOptions,
    StoreConfig,
    TileConfig,
)


@app.command()
def fit(
    inputs: list[Path] = typer.Argument(..., help="Media files, or folders of them (searched recursively).",
                                        show_default=False),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output .nf (one input)."),
    out_dir: Optional[Path] = typer.Option(None, "-O", "--out-dir", help="Directory for one .nf per input."),
    steps: Optional[int] = typer.Option(
        None, help=f"Steps [default: at most {TILE_FIT['steps']} Adam steps per tile, {FitConfig.steps} with --tile 0; "
        f"from --init: {AdaptConfig.steps} SGD steps, or {AdaptConfig.adam_steps} with --optimizer adam]."),
    lr: Optional[float] = typer.Option(
        None, help=f"Learning rate [default: Adam {TILE_FIT['lr']:g} for tiles, {FitConfig.lr:g} with --tile 0, "
        f"{LATENT_FIT['lr']:g} at its peak with --field grid (a low --bpp or --max-bytes takes "
        f"{min(s for s, _ in LATENT_FIT['lr_rates']):g} of it); from --init: SGD {AdaptConfig.lr:g}, "
        f"Adam {AdaptConfig.adam_lr:g}]."),
    tile: Tile = None,
    tile_frames: TileFrames = None,
    overlap: Overlap = None,
    seconds: Optional[float] = typer.Option(
        None, help="Stop each file's fit after this many seconds, keeping the best so far."),
    init: Optional[str] = typer.Option(
        None, help="A learned initialisation (init file or run directory), 'default' for the one nfit ships, or "
        "'random' [default: the one nfit ships for the files' modality (image tiles) where it applies to the "
        "field and tiling asked for; else random]."),
    density: Optional[float] = typer.Option(
        None, help="From a sparse run (--init RUN): fit at the level whose density is nearest this, e.g. 0.1."),
    standalone: bool = typer.Option(
        False, "--standalone", help="Sparse fields: embed the packed mask, so rendering needs no --init."),
    bits: Optional[int] = typer.Option(
        None, help=f"Store values coded at this many bits ({CODING_BITS[0]}-{CODING_BITS[1]}), or 0 for floats "
        f"[default: the fewest that keep --target-psnr, else within {CODING_LOSS_DB:g} dB of the fit]."),
    max_bytes: Optional[int] = typer.Option(
        None, help="Largest file in bytes, never written bigger. Images and audio under "
        f"{LATENT_BUDGET_BPP:g} bits per pixel (sample) with no --field, --init or --tile fit a latent grid "
        "(--field grid: the better file there); else tiles at the most bits that fit (fails if even "
        f"{CODING_BITS[0]} bits do not)."),
    bpp: Optional[float] = typer.Option(None, help="Largest file in bits per pixel (per sample for audio), as --max-bytes."),
    dtype: str = typer.Option(StoreConfig.dtype, help="With --bits 0: float32, or float16 (half the bytes)."),
    optimizer: str = typer.Option(AdaptConfig.optimizer, help="From --init: sgd (GradNCP's Algorithm 2) or adam."),
    no_rescale: bool = typer.Option(False, "--no-rescale", help="From --init: plain full-context SGD, no gradient re-scaling."),
    gamma: Optional[float] = typer.Option(None, help="From --init: fraction of points that sets the step size [default: the init's]."),
    field: Field = FieldOptions.name,
    width: Width = None,
    depth: Depth = None,
    w0: W0 = None,
    field_config: FieldConfig = None,
    modality: Modality = None,
    sample_rate: Optional[int] = typer.Option(
        None, help="Audio: resample to this many Hz [default: the file's; from --init: the init's]."),
    duration: Optional[float] = typer.Option(None, help="Audio: crop or pad to this many seconds [default: whole file]."),
    frames: Optional[int] = typer.Option(None, help="Video: keep this many frames [default: all]."),
    stride: int = typer.Option(SignalOptions.stride, help="Video: keep every N-th frame."),
    res: Optional[int] = typer.Option(
        None, help="Images: resized to longest side RES (aspect kept); video: centre square crop resized to RES x RES "
        "[default: native; NeRV init: its size]."),
    seed: int = typer.Option(FitConfig.seed, help="Seed of the random initialisation."),
    target_psnr: Optional[float] = typer.Option(
        None, help=f"Stop a file once its PSNR (dB) reaches this; 0: no target [default: {TILE_FIT['target_psnr']:g} for "
        "tiles, none with --tile 0]."),
    batch_size: int = typer.Option(FitConfig.batch_size, help="Files of equal shape fitted together."),
    device: Device = FitConfig.device,
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Leave inputs whose output exists alone."),
    force: bool = typer.Option(False, "--force", help="Replace existing outputs that nfit did not write."),
    save_context_maps: Optional[Path] = typer.Option(
        None, help="From an initialisation: draw GradNCP's selected context at each step into this folder (PNG, GIF)."),
    as_json: Json = False,
) -> None:
    """Fit neural fields to media files: `nfit fit photo.png -o photo.nf`, or many with -O DIR.

    Images, audio (WAV, FLAC, OGG, MP3) and video (MP4, WebM, AVI, MOV) alike, of any
    size: each file is cut into tiles fitted by small fields, batch by batch, in bounded
    memory (--tile 0: one field for the whole file). A fit stops at --target-psnr, --steps
    or --seconds, whichever comes first; the summary says which. A size budget (--bpp,
    --max-bytes) on images and audio fits one latent grid instead (--field grid), the
    smaller file.

    With `--init RUN/init.safetensors` the fit starts from a learned initialisation and
    takes a few re-scaled SGD steps (GradNCP's Algorithm 2). From a sparse run
    (`--init RUN --density 0.1`) the file stores only the surviving weights.

    Many files (or a folder) are streamed: each output is written as soon as it is
    fitted, a file that fails is listed at the end while the others go on (exit code 3),
    and --skip-existing finishes an interrupted run.
    """
    many = len(inputs) > 1 or any(p.is_dir() for p in inputs)

    def job():
        fields = field_options(field, width, depth, w0, field_config)
        with FitProgress(enabled=not as_json) as progress:
            return fit_paths(
                inputs, output=output, out_dir=out_dir, field=fields, progress=progress,
                options=SignalOptions(modality, sample_rate, duration, frames, stride, res),
                store=StoreConfig(bits, dtype, standalone, max_bytes, bpp), skip_existing=skip_existing, force=force,
                context_maps=save_context_maps, on_plan=lambda files: progress.plan(len(files) if many else 0),
                on_outcome=progress.file_done, init=init, density=density, steps=steps, lr=lr, optimizer=optimizer,
                rescale=not no_rescale, gamma=gamma, seed=seed, target_psnr=target_psnr, seconds=seconds,
                batch_size=batch_size, device=device, tiles=TileConfig(tile, tile_frames, overlap))

    rows = [_row(o) for o in run(job)]
    if as_json:
        print(json.dumps(rows if many else rows[0], indent=2))
    else:
        out.print(_table(rows))
    if target_psnr:  # the user's own goal: a file that fell short is said in words, not left to the table
        for r in rows:
            if r["status"] == "fitted" and r["psnr"] < target_psnr:
                say(_short_of(r, target_psnr))
    if many:
        _say_counts(rows)


_STOPPED = {"target_psnr": "target PSNR", "seconds": "time", "steps": "steps"}  # what ended a fit, in words


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="nfit fit", title_justify="left", caption_justify="left",
                  caption="PSNR, SSIM and steps are of what is stored (with Adam, each file's best iterate), "
                          "which the bar's last PSNR may differ from.")
    for col in ("output", "PSNR dB", "SSIM", "steps", "stopped by", "seconds", "coding", "bytes", "bits/sample"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for r in rows:
        if r["status"] != "fitted":
            table.add_row(r["output"], r["status"], *[""] * 7)
            continue
        ssim = "-" if r["ssim"] is None else f"{r['ssim']:.4f}"
        stopped = _STOPPED.get(r["stopped"], "-")
        coding = "float" if r["bits"] is None else "latents" if r.get("method") == "adam-rd" else f"{r['bits']} bits"
        table.add_row(r["output"], f"{r['psnr']:.2f}", ssim, str(r["steps"]), stopped, f"{r['seconds']:.1f}",
                      coding, f"{r['bytes']:,}", f"{r['bits_per_pixel']:.2f}")
    return table


def _short_of(row: dict[str, Any], target: float) -> str:
    """A file stored below --target-psnr: by how much, what stopped it, and what would go further."""
    more = "--seconds" if row["stopped"] == "seconds" else "--steps"
    if row.get("method") == "adam-rd":  # a latent grid: fixed steps, and a ceiling of its own
        how = f"raise {more}, or fit it in tiles (leave out --field grid)"
    else:
        how = f"raise {more}"
    return (f"nfit: {row['output']}: {row['psnr']:.2f} dB, short of --target-psnr {target:g} "
            f"(stopped by {_STOPPED.get(row['stopped'], '-')}): {how}")


def _say_counts(rows: list[dict[str, Any]]) -> None:
    """Many files: how many were fitted, skipped and failed, and why each failure (exit code 3 then)."""
    failures = [r for r in rows if r["status"] == "failed"]
    counts = {k: sum(r["status"] == k for r in rows) for k in ("fitted", "skipped", "failed")}
    err.print(f"nfit: {len(rows)} file(s): " + ", ".join(f"{v} {k}" for k, v in counts.items()), highlight=False)
    for r in failures:
        say(f"nfit: failed: {r['error']}")
    if failures:
        raise typer.Exit(EXIT_SOME_FAILED)


def _row(o) -> dict[str, Any]:
    """One input's line of the summary (a FileOutcome as plain data)."""
    row: dict[str, Any] = {"input": str(o.input), "output": str(o.output), "status": o.status}
    if o.status == "fitted":
        row.update({k: o.summary[k] for k in ("psnr", "ssim", "steps", "seconds")})
        row.update(stopped=o.summary.get("stopped"), tiles=o.summary.get("tiles"), bits=o.summary.get("bits"),
                   method=o.summary.get("method"))
        row.update(bytes=o.bytes, bits_per_pixel=round(o.bytes * 8 / math.prod(o.shape), 4))
    if o.error is not None:
        row["error"] = str(o.error)
    return row
