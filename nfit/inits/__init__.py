"""Initialisations that ship with nfit: what `nfit fit` starts from when no --init is given.

One file per modality that has one, meta-trained with nfit's own ``meta-train`` (see
README.md here for the recipe and the data). Each is an ordinary init file.
"""

from __future__ import annotations

from pathlib import Path

from nfit.fieldfile import MetaInit, load_init

HERE = Path(__file__).parent
DEFAULT_INITS = {"image": "image.safetensors"}  # modality -> file in this folder


def default_init_path(modality: str) -> Path | None:
    """The shipped initialisation for a modality, or None when nfit has none for it."""
    name = DEFAULT_INITS.get(modality)
    path = None if name is None else HERE / name
    return path if path is not None and path.is_file() else None


def load_default_init(modality: str) -> MetaInit | None:
    path = default_init_path(modality)
    return None if path is None else load_init(path)


__all__ = ["DEFAULT_INITS", "default_init_path", "load_default_init"]
