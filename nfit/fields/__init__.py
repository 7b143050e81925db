"""Coordinate networks with per-signal batched parameters, behind one registry.

Adding a field means adding one module that defines a config dataclass and a class
decorated with :func:`register_field`, and importing it here.
"""

from nfit.fields import fourier, grid, nerv, siren  # noqa: F401  (registration)
from nfit.fields.base import (
    FIELDS,
    Field,
    Params,
    batch_params,
    build_field,
    count_params,
    field_config_dict,
    stack_params,
    unbatch_params,
)
from nfit.fields.fourier import FourierConfig, FourierMLP
from nfit.fields.grid import GridConfig, LatentGrid
from nfit.fields.nerv import NeRV, NeRVConfig
from nfit.fields.options import field_config
from nfit.fields.siren import Siren, SirenConfig

__all__ = [
    "FIELDS",
    "Field",
    "FourierConfig",
    "FourierMLP",
    "GridConfig",
    "LatentGrid",
    "NeRV",
    "NeRVConfig",
    "Params",
    "Siren",
    "SirenConfig",
    "batch_params",
    "build_field",
    "count_params",
    "field_config",
    "field_config_dict",
    "stack_params",
    "unbatch_params",
]
