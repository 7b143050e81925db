"""From a user's field options to a field's validated config, for signals of a given grid."""

from __future__ import annotations

import dataclasses

from nfit.config import FIELD_DEFAULTS, FieldOptions
from nfit.errors import ConfigError
from nfit.fields.base import FIELDS, build_field
from nfit.signals import MODALITIES


def field_config(options: FieldOptions, modality: str, shape: tuple[int, ...], channels: int,
                 defaults: dict | None = None) -> dict:
    """The config dict of ``options.name`` for signals of ``modality`` on grid ``shape`` with ``channels``:
    nfit's defaults for a new field of that kind (FIELD_DEFAULTS), the modality's, then ``defaults``
    (those it knows: a tile's small field), then ``options.extra``, then width, depth and w0; validated."""
    if options.name not in FIELDS:
        raise ConfigError("--field", f"unknown field {options.name!r} (known: {', '.join(sorted(FIELDS))})")
    names = {f.name for f in dataclasses.fields(FIELDS[options.name].Config)}
    config = {"in_dim": len(shape), "out_dim": channels}
    if "size" in names:  # a field sized by its signal (latent grids)
        config["size"] = list(shape)
    config.update(FIELD_DEFAULTS.get(options.name, {}))
    config.update(MODALITIES[modality].field_defaults(options.name, shape))
    config.update(defaults or {})
    config = {k: v for k, v in config.items() if k in names}
    for key, value in (options.extra or {}).items():
        if key not in names:
            raise ConfigError("--field-config", f"the {options.name!r} field has no option {key!r}")
        config[key] = value
    for key in ("width", "depth", "w0"):
        value = getattr(options, key)
        if value is None:
            continue
        if key not in names:
            raise ConfigError(f"--{key}", f"the {options.name!r} field has no {key}")
        config[key] = value
    build_field(options.name, config)  # validate now, before any work
    return config
