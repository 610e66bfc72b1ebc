"""Task streams for continual learning, built from sklearn's bundled 8×8 digits (1797 images, nothing downloaded).

Three ways to turn one data set into a sequence of things to learn:

- ``permuted_digits``: *domain-incremental*. Task k applies one fixed pixel permutation π_k to every image,
  x ↦ x[π_k]; the labels stay 0–9. The tasks share nothing a pixel-wise learner can reuse, so a network trained
  on them in turn overwrites the old ones (the digits version of permuted MNIST).
- ``split_digits``: *class-incremental*. Task k holds only its own classes (e.g. {0, 1}, then {2, 3}, ...), one
  10-way head is shared, and the model is tested on every class it has seen without being told the task.
- ``drifting_stream``: a stream of batches whose inputs drift gradually (the images rotate by an angle that
  grows with time, or blend into a permuted copy), for models that must keep up with a changing world.

Each task keeps a fixed, seeded, class-stratified train/test split (80/20 by default: 1437/360 images), float32
inputs ``(N, 64)`` standardised per pixel with the *training* split's mean and standard deviation (the std is
floored at one grey level, so pixels that are almost always blank do not blow up), and int64 labels ``(N,)``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["DriftingStream", "Task", "digits_split", "drifting_stream", "permuted_digits", "split_digits"]

N_PIXELS = 64  # 8×8 digits
N_CLASSES = 10
_STD_FLOOR = 1.0  # grey levels (of 0..16)
DRIFT_KINDS = ("rotation", "permutation")


@dataclass(eq=False)
class Task:
    """One task of a continual stream.

    x_train: (N_train, d) float32, y_train: (N_train,) int64, x_test: (N_test, d), y_test: (N_test,).
    classes: the labels this task contains. info: how the task was made (e.g. ``info["permutation"]``).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[int, ...]
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(f"task {self.name!r}: x_{split} must be (N, d) and y_{split} (N,), "
                                 f"got {tuple(x.shape)} and {tuple(y.shape)}")
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise ValueError(f"task {self.name!r}: x_train and x_test must have the same width, "
                             f"got {self.x_train.shape[1]} and {self.x_test.shape[1]}")

    @property
    def d_in(self) -> int:
        return int(self.x_train.shape[1])

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"classes={self.classes})")


# ---------------------------------------------------------------------------------------------------------
# The base split


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - sklearn ships with Colab and the dev environment
        raise ImportError("labkit.continual needs scikit-learn for its bundled digits: pip install scikit-learn") \
            from err
    digits = load_digits()
    return digits.data.astype(np.float64), digits.target.astype(np.int64)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_test_frac(test_frac: float) -> float:
    if not 0.0 < test_frac < 1.0:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    return float(test_frac)


@functools.lru_cache(maxsize=8)
def _split_indices(seed: int, test_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Class-stratified train/test indices into the 1797 digits, fixed by ``seed``."""
    _, y = _raw_digits()
    rng = np.random.default_rng([seed, 0])
    train, test = [], []
    for c in range(N_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_frac * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train_idx, test_idx = rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
    train_idx.flags.writeable = test_idx.flags.writeable = False  # cached: shared by every caller
    return train_idx, test_idx


def _standardiser(x_train_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x_train_raw.mean(0), np.maximum(x_train_raw.std(0), _STD_FLOOR)


def digits_split(seed: int = 0, test_frac: float = 0.2) -> Task:
    """The plain digits as one task (no permutation): the seeded, standardised train/test split every stream uses."""
    seed, test_frac = _check_seed(seed), _check_test_frac(test_frac)
    x, y = _raw_digits()
    tr, te = _split_indices(seed, test_frac)
    mean, std = _standardiser(x[tr])
    f = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))  # noqa: E731
    return Task("digits", f(x[tr]), torch.from_numpy(y[tr]), f(x[te]), torch.from_numpy(y[te]),
                tuple(range(N_CLASSES)), info={"mean": mean, "std": std, "train_idx": tr, "test_idx": te})


# ---------------------------------------------------------------------------------------------------------
# Permuted and split digits


def permuted_digits(n_tasks: int = 8, seed: int = 0, identity_first: bool = True, test_frac: float = 0.2) -> list[Task]:
    """``n_tasks`` permuted-digits tasks: task k is x ↦ x[π_k] with a fixed random permutation π_k of the 64 pixels.

    identity_first: task 0 keeps the pixels in place (π_0 = identity), as in most permuted-MNIST setups;
    otherwise every task, task 0 included, has a random permutation. All tasks share one train/test split of
    the images (so task k's test images are never seen in any task's training set) and all ten labels.
    ``task.info["permutation"]`` holds π_k (a (64,) int64 array). Returns a list of ``Task``.
    """
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
        raise ValueError(f"n_tasks must be a positive int, got {n_tasks!r}")
    base = digits_split(seed, test_frac)
    rng = np.random.default_rng([_check_seed(seed), 1])
    tasks = []
    for k in range(n_tasks):
        perm = np.arange(N_PIXELS) if (k == 0 and identity_first) else rng.permutation(N_PIXELS)
        p = torch.from_numpy(perm)
        tasks.append(Task(f"perm-{k}", base.x_train[:, p].contiguous(), base.y_train.clone(),
                          base.x_test[:, p].contiguous(), base.y_test.clone(), tuple(range(N_CLASSES)),
                          info={"permutation": perm}))
    return tasks


def split_digits(
    n_tasks: int = 5, seed: int = 0, shuffle_classes: bool = False, test_frac: float = 0.2,
    class_order: Sequence[int] | None = None,
) -> list[Task]:
    """Class-incremental digits: the ten classes cut into ``n_tasks`` disjoint groups, one task per group.

    With n_tasks=5 the groups are the pairs {0,1}, {2,3}, ... (or, with shuffle_classes, pairs of a seeded random
    class order; class_order fixes the order by hand). Labels keep their digit values, so one 10-way head serves
    every task and a model must tell all classes seen so far apart. Sizes differ by at most one class when
    n_tasks does not divide 10. Returns a list of ``Task`` with ``task.classes`` the group.
    """
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or not 1 <= n_tasks <= N_CLASSES:
        raise ValueError(f"n_tasks must be an int in 1..{N_CLASSES}, got {n_tasks!r}")
    if class_order is not None:
        order = np.asarray(class_order, dtype=np.int64)
        if sorted(order.tolist()) != list(range(N_CLASSES)):
            raise ValueError(f"class_order must be a permutation of 0..{N_CLASSES - 1}, got {list(class_order)}")
    elif shuffle_classes:
        order = np.random.default_rng([_check_seed(seed), 2]).permutation(N_CLASSES)
    else:
        order = np.arange(N_CLASSES)
    base = digits_split(seed, test_frac)
    tasks = []
    for k, group in enumerate(np.array_split(order, n_tasks)):
        g = torch.from_numpy(np.asarray(group))
        tr, te = torch.isin(base.y_train, g), torch.isin(base.y_test, g)
        classes = tuple(int(c) for c in group)
        tasks.append(Task(f"classes-{'-'.join(map(str, classes))}", base.x_train[tr], base.y_train[tr],
                          base.x_test[te], base.y_test[te], classes, info={"task_index": k}))
    return tasks


# ---------------------------------------------------------------------------------------------------------
# A drifting stream


@dataclass(eq=False)
class DriftingStream:
    """Batches whose input distribution drifts: batch t holds x[t]: (B, 64), y[t]: (B,), drawn at drift level drift[t].

    x: (n_batches, B, 64) float32, y: (n_batches, B) int64, drift: (n_batches,) float (degrees for "rotation",
    the blend fraction in [0, 1] for "permutation"). base: the undrifted digits ``Task`` (its train split is
    the place to pretrain; the stream draws its images from its *test* split, so the stream holds no image a
    model pretrained on base.x_train has seen).
    """

    x: torch.Tensor
    y: torch.Tensor
    drift: np.ndarray
    kind: str
    base: Task

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __iter__(self):
        return iter(zip(self.x, self.y))


def _rotate(images: np.ndarray, angle: float) -> np.ndarray:
    """images: (B, 8, 8) raw grey levels, rotated by ``angle`` degrees about the centre (bilinear, blank fill)."""
    if angle == 0.0:
        return images
    from scipy.ndimage import rotate

    return np.clip(rotate(images, angle, axes=(1, 2), reshape=False, order=1, mode="constant", cval=0.0), 0, 16)


def drifting_stream(
    n_batches: int = 60, batch_size: int = 32, kind: str = "rotation", max_drift: float | None = None,
    start: float = 0.0, seed: int = 0, test_frac: float = 0.2,
) -> DriftingStream:
    """A stream of ``n_batches`` batches whose inputs drift gradually from the plain digits.

    The drift level grows linearly from 0 (batches before the fraction ``start`` of the stream) to ``max_drift``
    (the last batch): drift[t] = max_drift · clip((t/(n_batches−1) − start)/(1 − start), 0, 1).

    - kind="rotation": every image of batch t is rotated by drift[t] degrees (default max_drift 45: a digits
      model trained upright falls from ~96 % to ~70 % at 10° and to near chance by 40°).
    - kind="permutation": batch t is the blend (1 − f)·x + f·x[π] with f = drift[t] of the image and a fixed
      seeded pixel permutation π of it (default max_drift 1: the last batch is fully permuted).

    Each batch samples batch_size images (with replacement, seeded) from the base split's test images and is
    standardised with the base *training* statistics, so the drift shows up as a shift in the model's inputs.
    """
    if kind not in DRIFT_KINDS:
        raise ValueError(f"kind must be one of {DRIFT_KINDS}, got {kind!r}")
    for name, v in (("n_batches", n_batches), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not 0.0 <= start < 1.0:
        raise ValueError(f"start must be in [0, 1), got {start}")
    if max_drift is None:
        max_drift = 45.0 if kind == "rotation" else 1.0
    if kind == "permutation" and not 0.0 <= max_drift <= 1.0:
        raise ValueError(f"max_drift for kind='permutation' is a blend fraction in [0, 1], got {max_drift}")
    base = digits_split(seed, test_frac)
    raw, labels = _raw_digits()
    pool = base.info["test_idx"]
    mean, std = base.info["mean"], base.info["std"]
    rng = np.random.default_rng([_check_seed(seed), 3])
    perm = rng.permutation(N_PIXELS)
    frac = np.arange(n_batches) / max(n_batches - 1, 1)
    drift = max_drift * np.clip((frac - start) / (1.0 - start), 0.0, 1.0)
    xs, ys = np.empty((n_batches, batch_size, N_PIXELS), np.float32), np.empty((n_batches, batch_size), np.int64)
    for t in range(n_batches):
        idx = pool[rng.integers(0, len(pool), batch_size)]
        img = raw[idx]
        if kind == "rotation":
            img = _rotate(img.reshape(-1, 8, 8), float(drift[t])).reshape(-1, N_PIXELS)
        else:
            img = (1.0 - drift[t]) * img + drift[t] * img[:, perm]
        xs[t], ys[t] = (img - mean) / std, labels[idx]
    return DriftingStream(torch.from_numpy(xs), torch.from_numpy(ys), drift, kind, base)
