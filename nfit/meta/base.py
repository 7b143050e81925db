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
from nfit.fields.masked import Mask
from nfit.meta.inner import InnerOps


@dataclass
class OuterResult:
    loss: Tensor  # scalar with a graph to theta_0: mean over the batch
    mse: Tensor  # [B] full-context MSE of the adapted parameters, detached (train PSNR)


class Strategy(Protocol):
    name: ClassVar[str]
    Config: ClassVar[type]  # a dataclass of hyperparameters with the reference defaults
    config: Any

    def outer_loss(self, field: Field, theta: Params, coords: Tensor, targets: Tensor,
                   ops: InnerOps | None = None) -> OuterResult:
        """theta: unbatched initialisation (leaf tensors); coords [N, d]; targets [B, N, C].

        ``ops``: the differentiation primitives the loss is written against (nfit.meta.inner);
        None: eager autograd, checkpointed if the config asks. The compiled step
        (nfit.meta.compiled) passes torch.func's, so each algorithm is stated once.
        """
        ...


class Phases:
    """The hooks the outer loop (nfit.train) calls around its steps, with a dense strategy's answers.

    A strategy that changes the field as it trains (Meta-SparseINR prunes a mask in
    rounds) overrides them; the loop itself has no case for any one strategy.
    """

    keeps_levels: ClassVar[bool] = False  # an initialisation is kept at the end of every phase, from level 0

    @property
    def dense(self) -> Strategy:
        """The strategy whose inner loop runs, whose step size and gamma test-time fitting uses."""
        return self  # type: ignore[return-value]

    def prepare(self, field: Field, theta: Params) -> tuple[Field, Mask | None]:
        """The field the outer loss runs on, and its mask (None: dense), for initial parameters ``theta``."""
        return field, None

    def level_at(self, step: int) -> int:
        """Phases begun before outer step ``step`` (0-based): where a resumed run stands."""
        return 0

    def begin_step(self, step: int, theta: Params, mask: Mask | None, adam: dict[str, dict[str, Tensor]],
                   seed: int) -> dict[str, Any] | None:
        """Before outer step ``step``: start a phase if one starts here (in place), and say so (the values of a
        "round" event, with its "level"), else None."""
        return None

    def phase_ends(self, done: int) -> bool:
        """Whether ``done`` outer steps complete a phase (the loop validates and keeps a level)."""
        return False

    def progress(self, mask: Mask | None, level: int) -> dict[str, Any]:
        """Values logged with every training step."""
        return {}

    def describe(self, mask: Mask | None, level: int) -> dict[str, Any] | None:
        """What an initialisation records of the phase it was written in (None: nothing)."""
        return None


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
