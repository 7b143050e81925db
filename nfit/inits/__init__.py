"""Initialisations that ship with nfit: what `nfit fit --init default` starts from.

One file per modality that has one, meta-trained with nfit's own ``meta-train`` (see
README.md here for the recipe and the data). Each is an ordinary init file.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path

import torch

from nfit.fieldfile import MetaInit, read_init

HERE = Path(__file__).parent
DEFAULT = "default"  # the ``init`` that asks for these
DEFAULT_INITS = {"image": "image_tiles.safetensors"}  # modality -> file in this folder


def default_init_path(modality: str) -> Path | None:
    """The shipped initialisation for a modality, or None when nfit has none for it."""
    name = DEFAULT_INITS.get(modality)
    path = None if name is None else HERE / name
    return path if path is not None and path.is_file() else None


@lru_cache(maxsize=None)
def shipped_init(modality: str) -> MetaInit | None:
    """The shipped initialisation of a modality as it was trained, or None."""
    path = default_init_path(modality)
    return None if path is None else read_init(path)


def default_init(modality: str, channels: int) -> MetaInit | None:
    """The shipped initialisation for signals of this modality and channel count, or None.

    The image one is trained on RGB; other channel counts get it with its output layer
    adapted: grey is the mean of the RGB rows (a field that predicts RGB, averaged,
    predicts the mean-of-channels grey exactly), and an alpha channel starts opaque
    (zero weights, and a bias that puts the output at 1).
    """
    init = shipped_init(modality)
    if init is None or channels == init.channels:
        return init
    if init.channels != 3 or channels not in (1, 2, 4):
        return None
    last = max(int(k[1:].split(".")[0]) for k in init.params if k.endswith(".weight"))
    w, b = init.params[f"l{last}.weight"], init.params[f"l{last}.bias"]  # [3, width], [3]
    colour = (w.mean(0, keepdim=True), b.mean(0, keepdim=True)) if channels < 3 else (w, b)
    offset = init.field_config.get("out_offset", 0.0)
    alpha = (torch.zeros(1, w.shape[1]), torch.full((1,), 1.0 - offset))
    rows = [colour, alpha] if channels in (2, 4) else [colour]
    params = dict(init.params)
    params[f"l{last}.weight"] = torch.cat([r[0] for r in rows])
    params[f"l{last}.bias"] = torch.cat([r[1] for r in rows])
    return dataclasses.replace(init, params=params, channels=channels, field_config={**init.field_config, "out_dim": channels})


def trained_channels(modality: str) -> int | None:
    """The channel count the shipped initialisation of a modality was trained on."""
    init = shipped_init(modality)
    return None if init is None else init.channels


__all__ = ["DEFAULT", "DEFAULT_INITS", "default_init", "default_init_path", "shipped_init", "trained_channels"]
