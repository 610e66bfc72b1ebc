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

- ``merging``: averaging, task arithmetic, TIES and OPCM as continual mergers over a stream of fine-tuned
  models, in a strong-base and a weak-base regime (fused versions in ``labkit.kernels``: ``merge_update``,
  ``ties_merge``, ``opcm_project``).
- ``rehearsal``: the view-batch schedule (``ViewBatchSampler``, ``view_batch_run``) and online proxy-based
  contrastive replay (``proxy_contrastive_loss``, ``online_run``: ER / PCR / HPCR).
- ``lora``: LoRA adapters on the ``MLP`` (``LoRALinear``, ``LoRAMLP``, merge / unmerge), orthogonal adapters,
  O3 continual unlearning behind an OOD gate, I-LoRA's EMA dual memory.
- ``sculpt``: subspace-constrained full fine-tuning (adaptive-SVD protected bases, two-sided projection).
- ``editing``: lifelong model editing with a side memory and router (WISE, FT-L, a retrieval codebook) and
  MOS (adapters merged and retrieved by self-refinement).
- ``errormem``: an error memory beside a drifting model (ReLoop2) and a compressed knowledge bank read by a
  frozen model (CMT).
- ``federated``: FedAvg vs Federated Orthogonal Training, as one process or real gloo processes
  (``spawn_gloo``).
- ``orthogonal``: online orthogonal dictionary learning by Frank–Wolfe and the orthogonal-convolution
  regulariser (``conv_matrix``, ``orth_reg``).
- ``lmforget``: recognition, recall and retention of sentences studied a few times by chapter 1's tinylm.

Experiments that take longer than a notebook cell should write their full run to ``labkit/assets/<name>.json``
(``python -m labkit.continual.<name>`` regenerates it; ``load()`` reads it).

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
