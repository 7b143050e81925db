"""``nfit render``: a .nf file decoded into a media file, at any size or rate."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nfit.api import render_file
from nfit.cli.app import app, run, say
from nfit.cli.options import Device
from nfit.cli.progress import RenderProgress
from nfit.config import RenderConfig


@app.command()
def render(
    file: Path = typer.Argument(..., help="A .nf file.", show_default=False),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="Output: image .png/.jpg, audio .wav/.flac, video .mp4/.webm or a folder "
        "for PNG frames [default: beside FILE, as FILE_render.png/.wav/.mp4]."),
    res: Optional[int] = typer.Option(RenderConfig.res, help="Images, video: longest side in pixels; aspect ratio kept."),
    width: Optional[int] = typer.Option(RenderConfig.width, help="Output width (with --height, or alone)."),
    height: Optional[int] = typer.Option(RenderConfig.height, help="Output height (with --width, or alone)."),
    sample_rate: Optional[int] = typer.Option(RenderConfig.sample_rate, help="Audio: samples per second [default: the source's]."),
    fps: Optional[float] = typer.Option(RenderConfig.fps, help="Video: frames per second [default: the source's]."),
    bit_depth: Optional[int] = typer.Option(RenderConfig.bit_depth, help="8 or 16 (PNG, WAV, FLAC) [default: the source's]."),
    quality: int = typer.Option(RenderConfig.quality, help="JPEG, MP4, WebM quality (1-100)."),
    init: Optional[Path] = typer.Option(
        None, help="Sparse fields: the initialisation holding the mask (file, or run directory searched by hash)."),
    device: Device = RenderConfig.device,
    force: bool = typer.Option(False, "--force", help="Replace an existing output that nfit did not render."),
) -> None:
    """Decode a .nf file at its native size or any other: `nfit render photo.nf --res 1024 -o big.png`.

    Fields are continuous: audio renders at any --sample-rate, video at any --fps and size.
    """
    def job():
        config = RenderConfig(res=res, width=width, height=height, sample_rate=sample_rate, fps=fps,
                              bit_depth=bit_depth, quality=quality, device=device)
        with RenderProgress() as progress:
            return render_file(file, output, config, init=init, force=force, on_progress=progress)

    path, shape, modality = run(job)
    size = f"{shape[0]:,} samples" if modality == "audio" else " x ".join(map(str, reversed(shape[-2:])))
    if modality == "video":
        size += f", {shape[0]} frames"
    say(f"wrote {path} ({size})")
