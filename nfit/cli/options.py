"""Options that several commands share, declared once as ``Annotated`` aliases; their
defaults and the defaults their help names come from the config dataclasses."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from nfit.config import FRAME_CHUNK, TILE_FIELD, TILES, FieldOptions
from nfit.errors import ConfigError
from nfit.fields import FIELDS, SirenConfig

FIELD_HELP = f"Field: {', '.join(sorted(FIELDS))} (grid: latent grids, the most compact files; fit only)."
FIELD_CONFIG_HELP = """Other options of the field's config as JSON, e.g. '{"strides": [2, 2], "channels": [32, 16]}' for nerv."""
MODALITY_HELP = "image, audio or video [default: from the file extensions]."
DEVICE_HELP = "auto, cpu or cuda."

# The field of a fit or a run (nfit eval prefixes them: they set its random baseline).
Field = Annotated[str, typer.Option(help=FIELD_HELP)]
Width = Annotated[Optional[int], typer.Option(help=f"Hidden width [default: {SirenConfig.width}].")]
Depth = Annotated[Optional[int], typer.Option(help=f"Linear layers [default: {SirenConfig.depth}].")]
W0 = Annotated[Optional[float], typer.Option(help=f"SIREN frequency w0 [default: {SirenConfig.w0:g}].")]
FieldConfig = Annotated[Optional[str], typer.Option(help=FIELD_CONFIG_HELP)]

# Tiles: a signal cut into tiles of one size, each with its own small field.
Tile = Annotated[Optional[int], typer.Option(
    help=f"Tile size: images TxT pixels, audio T samples, video TxT pixels per frame; each tile gets its own small "
    f"field (SIREN width {TILE_FIELD['width']}, depth {TILE_FIELD['depth']}) [fit's default: image {TILES['image'][0]}, "
    f"audio {TILES['audio'][0]}, video {TILES['video'][1]}; 0: one field for the whole signal].", min=0)]
TileFrames = Annotated[Optional[int], typer.Option(
    help=f"Video: frames per tile [default: {TILES['video'][0]}]; with --field nerv, frames per clip-level field, "
    f"a longer video being cut along time [default: {FRAME_CHUNK}].", min=1)]
Overlap = Annotated[Optional[int], typer.Option(
    help="Samples that neighbouring tiles share, blended on rendering so that no seam shows [default: an eighth of "
    "the tile; video: a quarter of its frames].", min=0)]

# The data: which modality, and where it goes.
Modality = Annotated[Optional[str], typer.Option(help=MODALITY_HELP)]
Device = Annotated[str, typer.Option(help=DEVICE_HELP)]
Json = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")]


def exponent(value: float) -> str:
    """A step size as people write it: 1e-2, 5e-2."""
    return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")


def field_options(name: str, width: int | None, depth: int | None, w0: float | None, config: str | None) -> FieldOptions:
    """The field options of a command line: ``--field-config`` parsed from JSON."""
    extra = None
    if config is not None:
        try:
            extra = json.loads(config)
        except json.JSONDecodeError as e:
            raise ConfigError("--field-config", f"is not JSON ({e.msg})") from None
        if not isinstance(extra, dict):
            raise ConfigError("--field-config", "must be a JSON object")
    return FieldOptions(name, width, depth, w0, extra)


__all__ = ["Depth", "Device", "Field", "FieldConfig", "Json", "Modality", "Overlap", "Tile", "TileFrames", "W0", "Width",
           "exponent", "field_options"]
