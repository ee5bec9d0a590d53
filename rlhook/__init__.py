"""rlhook: interpretability for PyTorch models that speak TensorDict, built first for deep RL."""

from rlhook.hooked import HookedModule, MissingKeyError
from rlhook.hooks import Hooks, hook_count
from rlhook.methods import Method
from rlhook.paths import PathError
from rlhook.run import Proxy, ProxyError

__all__ = [
    "HookedModule",
    "Hooks",
    "Method",
    "MissingKeyError",
    "PathError",
    "Proxy",
    "ProxyError",
    "hook_count",
]
__version__ = "0.1.0"
