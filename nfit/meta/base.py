"""The interface every meta-learning strategy implements, and their registry.

A strategy turns a shared initialisation theta_0 and a batch of signals into the
outer loss whose gradient trains theta_0. It is a pure function of its explicit
arguments; the outer loop (optimiser, data, checkpoints, devices) lives in
:mod:`nfit.train` and is the same for every strategy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from torch import Tensor

from nfit.errors import ConfigError
from nfit.fields import Field, Params


@dataclass
class OuterResult:
    loss: Tensor  # scalar with a graph to theta_0: mean over the batch
    mse: Tensor  # [B] full-context MSE of the adapted parameters, detached (train PSNR)


class Strategy(Protocol):
    name: ClassVar[str]
    Config: ClassVar[type]  # a dataclass of hyperparameters with the reference defaults
    config: Any

    def outer_loss(self, field: Field, theta: Params, coords: Tensor, targets: Tensor) -> OuterResult:
        """theta: unbatched initialisation (leaf tensors); coords [N, d]; targets [B, N, C]."""
        ...


STRATEGIES: dict[str, type] = {}


def register_strategy(cls: type) -> type:
    STRATEGIES[cls.name] = cls
    return cls


def build_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """A strategy by registry name, with some hyperparameters overridden (None: keep default)."""
    if name not in STRATEGIES:
        raise ConfigError("--algo", f"unknown algorithm {name!r} (known: {', '.join(sorted(STRATEGIES))})")
    cls = STRATEGIES[name]
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if hasattr(cls, "from_options"):  # a strategy that wraps another splits the options itself
        return cls.from_options(options)
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(options) - known
    if unknown:
        opts = ", ".join("--" + k.replace("_", "-") for k in sorted(unknown))
        raise ConfigError(None, f"{opts} does not apply to --algo {name}")
    return cls(cls.Config(**options))


def strategy_config_dict(strategy: Strategy) -> dict[str, Any]:
    config = dataclasses.asdict(strategy.config)
    inner = getattr(strategy, "inner", None)
    if inner is not None:  # a wrapping strategy also records the one it runs
        config["inner_config"] = strategy_config_dict(inner)
    return config


def check_positive(**values: float) -> None:
    for name, value in values.items():
        if not 0 < value < float("inf"):  # also refuses NaN
            raise ConfigError("--" + name.replace("_", "-"), "must be positive and finite")
