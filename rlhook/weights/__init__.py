"""Weight methods: pruning, adapters (inserted modules) and task vectors; all undone on exit."""

from rlhook.weights.adapters import Adapter, LowRank
from rlhook.weights.pruning import Pruning
from rlhook.weights.task_vectors import TaskVector

__all__ = ["Adapter", "LowRank", "Pruning", "TaskVector"]
