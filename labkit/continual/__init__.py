"""Chapter 4, continual learning: learn a sequence of tasks with one model and measure what it forgets.

- ``data``: task streams built from sklearn's bundled 8×8 digits: ``permuted_digits`` (domain-incremental,
  one fixed pixel permutation per task), ``split_digits`` (class-incremental, disjoint classes per task) and
  ``drifting_stream`` (batches whose inputs rotate gradually over time). Every task is a ``Task``.
- ``models``: the small ``MLP`` every experiment uses, parameters as a ``name -> tensor`` dict
  (``get_params`` / ``set_params``) and ``task_vector`` (fine-tuned minus base), with checked names and shapes.
- ``metrics``: ``AccuracyMatrix`` (R[i, j] = accuracy on task j after training task i) with ACC, BWT,
  forgetting and the accuracy-so-far curve, and its two plots.
- ``train``: ``train_task`` (one task, optionally with replay and a penalty), ``run_sequence`` (a whole stream
  under a strategy: ``finetune``, ``replay_uniform``, ``replay_powerlaw``, ``ewc``, ``joint``), the
  reservoir ``ReplayBuffer``, the power-law rehearsal schedule ``powerlaw_probs`` and EWC
  (``fisher_diagonal``, ``EWCPenalty``).

Everything is seeded and sized for a CPU: one permuted-digits task trains to > 90 % test accuracy in well
under a second on one thread.
"""

from __future__ import annotations

from labkit.continual.data import DriftingStream, Task, drifting_stream, permuted_digits, split_digits
from labkit.continual.metrics import AccuracyMatrix
from labkit.continual.models import MLP, get_params, set_params, task_vector

__all__ = [
    "MLP",
    "AccuracyMatrix",
    "DriftingStream",
    "Task",
    "drifting_stream",
    "get_params",
    "permuted_digits",
    "set_params",
    "split_digits",
    "task_vector",
]
