"""Weight methods: pruning, splices (inserted modules) and task vectors; all undone on exit."""

from rlhook.weights.pruning import Pruning
from rlhook.weights.splice import LowRank, Splice
from rlhook.weights.task_vectors import TaskVector

__all__ = ["LowRank", "Pruning", "TaskVector", "Splice"]
