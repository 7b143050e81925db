"""Meta-learning strategies: interchangeable ways to learn an initialisation.

Adding one means one module with a config dataclass and a class decorated with
:func:`register_strategy`, imported here.
"""

from nfit.meta import gradncp, maml, sparse  # noqa: F401  (registration)
from nfit.meta.base import STRATEGIES, OuterResult, Strategy, build_strategy, register_strategy, strategy_config_dict
from nfit.meta.gradncp import GradNCP, GradNCPConfig
from nfit.meta.maml import Maml, MamlConfig
from nfit.meta.sparse import Sparse, SparseConfig

__all__ = [
    "STRATEGIES",
    "GradNCP",
    "GradNCPConfig",
    "Maml",
    "MamlConfig",
    "OuterResult",
    "Sparse",
    "SparseConfig",
    "Strategy",
    "build_strategy",
    "register_strategy",
    "strategy_config_dict",
]
