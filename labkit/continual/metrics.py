r"""How much did the model forget? The accuracy matrix and the numbers read from it.

Train on tasks 0, 1, ..., T−1 in turn and, after each, test on *every* task. R[i, j] is the test accuracy on task
j after training on task i (i, j = 0..T−1): row i is a snapshot, the diagonal is each task just learned, the part
below the diagonal is what became of it later and the part above is the (chance-level, usually) accuracy on tasks
not yet seen. From the matrix (Lopez-Paz & Ranzato, 2017; Chaudhry et al., 2018):

- ACC = (1/T) Σ_j R[T−1, j], the final average accuracy;
- BWT = 1/(T−1) Σ_{j<T−1} (R[T−1, j] − R[j, j]), backward transfer: negative when learning later tasks hurt
  earlier ones (forgetting), positive when it helped;
- forgetting = 1/(T−1) Σ_{j<T−1} (max_{i<T−1} R[i, j] − R[T−1, j]): how far each old task fell from the best it
  ever was (Chaudhry's definition, ≥ 0 whenever the best came before the last row);
- accuracy so far a_i = (1/(i+1)) Σ_{j≤i} R[i, j]: the average over the tasks seen up to i, the curve that shows
  the decay as the stream grows (a_{T−1} = ACC).

``AccuracyMatrix`` holds R (pure numpy, validated) and computes all four; ``plot_accuracy_matrix`` and
``plot_acc_so_far`` draw it through ``labkit.viz``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["AccuracyMatrix", "plot_acc_so_far", "plot_accuracy_matrix"]


class AccuracyMatrix:
    """R: (T, T) accuracies in [0, 1], R[i, j] = accuracy on task j after training on task i.

    Build it whole (``AccuracyMatrix(R)``) or row by row (``AccuracyMatrix.empty(T)`` then ``record(i, accs)``);
    rows not yet recorded are NaN and the metrics refuse to run until every row is there.
    """

    def __init__(self, R: np.ndarray | Sequence[Sequence[float]], names: Sequence[str] | None = None) -> None:
        R = np.array(R, dtype=np.float64)
        if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 1:
            raise ValueError(f"R must be a square (T, T) matrix with T >= 1, got shape {R.shape}")
        filled = R[~np.isnan(R)]
        if np.isinf(filled).any() or (filled < 0).any() or (filled > 1).any():
            raise ValueError(f"R must hold accuracies in [0, 1] (or NaN for rows not recorded yet), "
                             f"got values in [{filled.min()}, {filled.max()}]")
        for i, row in enumerate(R):
            if np.isnan(row).any() and not np.isnan(row).all():
                raise ValueError(f"R row {i} must be complete or all NaN, got {row.tolist()}")
        names = [f"task {j}" for j in range(R.shape[0])] if names is None else [str(n) for n in names]
        if len(names) != R.shape[0]:
            raise ValueError(f"names must have {R.shape[0]} entries, got {len(names)}")
        self._R, self.names = R, names

    @classmethod
    def empty(cls, n_tasks: int, names: Sequence[str] | None = None) -> AccuracyMatrix:
        """A (n_tasks, n_tasks) matrix with no rows recorded yet."""
        if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
            raise ValueError(f"n_tasks must be a positive int, got {n_tasks!r}")
        return cls(np.full((n_tasks, n_tasks), np.nan), names)

    def record(self, i: int, accuracies: Sequence[float]) -> None:
        """Set row i (accuracy on every task after training task i)."""
        T = self.n_tasks
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < T:
            raise ValueError(f"i must be a task index in 0..{T - 1}, got {i!r}")
        row = np.asarray(accuracies, dtype=np.float64)
        if row.shape != (T,):
            raise ValueError(f"accuracies must have shape ({T},), got {row.shape}")
        if not np.isfinite(row).all() or (row < 0).any() or (row > 1).any():
            raise ValueError(f"accuracies must be finite and in [0, 1], got {row.tolist()}")
        self._R[i] = row

    # ------------------------------------------------------------------------------------------------------

    @property
    def n_tasks(self) -> int:
        return int(self._R.shape[0])

    @property
    def R(self) -> np.ndarray:
        """A copy of the (T, T) matrix."""
        return self._R.copy()

    @property
    def complete(self) -> bool:
        return bool(np.isfinite(self._R).all())

    def _full(self, what: str) -> np.ndarray:
        missing = np.flatnonzero(np.isnan(self._R).all(1))
        if len(missing):
            raise ValueError(f"{what} needs every row of R, row {int(missing[0])} is not recorded")
        return self._R

    def _need_two(self, what: str) -> np.ndarray:
        R = self._full(what)
        if self.n_tasks < 2:
            raise ValueError(f"{what} needs at least 2 tasks, got {self.n_tasks}")
        return R

    @property
    def acc(self) -> float:
        """ACC = mean of the last row."""
        return float(self._full("ACC")[-1].mean())

    @property
    def bwt(self) -> float:
        """BWT = mean over j < T−1 of R[T−1, j] − R[j, j]."""
        R = self._need_two("BWT")
        j = np.arange(self.n_tasks - 1)
        return float((R[-1, j] - R[j, j]).mean())

    @property
    def forgetting_per_task(self) -> np.ndarray:
        """(T−1,): max_{i<T−1} R[i, j] − R[T−1, j] for each old task j < T−1."""
        R = self._need_two("forgetting")
        return R[:-1, :-1].max(0) - R[-1, :-1]

    @property
    def forgetting(self) -> float:
        """Mean forgetting over the old tasks (Chaudhry et al., 2018)."""
        return float(self.forgetting_per_task.mean())

    @property
    def learning_accuracy(self) -> float:
        """Mean of the diagonal: how well each task was learned when it was the current one."""
        return float(np.diag(self._full("learning accuracy")).mean())

    @property
    def acc_so_far(self) -> np.ndarray:
        """(T,): a_i = mean of R[i, :i+1], accuracy averaged over the tasks seen after training task i."""
        R = self._full("accuracy so far")
        return np.array([R[i, : i + 1].mean() for i in range(self.n_tasks)])

    def summary(self) -> dict[str, float]:
        """The headline numbers: ACC, BWT, forgetting, learning accuracy (BWT/forgetting only when T ≥ 2)."""
        out = {"ACC": self.acc, "LA": self.learning_accuracy}
        if self.n_tasks >= 2:
            out.update(BWT=self.bwt, forgetting=self.forgetting)
        return out

    def to_dict(self) -> dict:
        """JSON-friendly: {"R": nested lists, "names": [...], **summary()}."""
        return {"R": np.round(self._R, 6).tolist(), "names": list(self.names), **self.summary()}

    @classmethod
    def from_dict(cls, d: Mapping) -> AccuracyMatrix:
        return cls(d["R"], d.get("names"))

    def __repr__(self) -> str:
        if not self.complete:
            return f"AccuracyMatrix(T={self.n_tasks}, incomplete)"
        s = self.summary()
        return "AccuracyMatrix(T={}, {})".format(self.n_tasks, ", ".join(f"{k}={v:.3f}" for k, v in s.items()))


# ---------------------------------------------------------------------------------------------------------
# Plots


def plot_accuracy_matrix(matrix: AccuracyMatrix | np.ndarray, title: str = "accuracy matrix R[i, j]"):
    """Heatmap of R with each cell's accuracy (in %) written on it; rows = after training task i."""
    from labkit.viz import heatmap

    am = matrix if isinstance(matrix, AccuracyMatrix) else AccuracyMatrix(matrix)
    R = am.R
    fig = heatmap(R, title=title, x=am.names, y=am.names, xaxis="evaluated on task j",
                  yaxis="after training task i", colorscale="Viridis", zmid=None)
    fig.update_traces(text=100 * R, texttemplate="%{text:.0f}", zmin=0.0, zmax=1.0,
                      hovertemplate="after %{y}<br>on %{x}<br>acc %{z:.3f}<extra></extra>")
    return fig


def plot_acc_so_far(
    curves: Mapping[str, AccuracyMatrix | Sequence[AccuracyMatrix]], title: str = "accuracy on the tasks seen so far",
):
    """One line per strategy: a_i against the number of tasks seen, with a ±1 std band when a strategy has several
    matrices (seeds or task orders)."""
    from labkit.viz import line_band

    if not curves:
        raise ValueError("curves must hold at least one strategy")
    arrays, T = {}, None
    for name, mats in curves.items():
        mats = [mats] if isinstance(mats, AccuracyMatrix) else list(mats)
        if not mats:
            raise ValueError(f"curves[{name!r}] must hold at least one AccuracyMatrix")
        a = np.stack([m.acc_so_far for m in mats])
        if T is not None and a.shape[1] != T:
            raise ValueError(f"curves[{name!r}] must have {T} tasks like the others, got {a.shape[1]}")
        T, arrays[name] = a.shape[1], a
    return line_band(np.arange(1, T + 1), arrays, title=title, xaxis="tasks seen", yaxis="mean accuracy")
