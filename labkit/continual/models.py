"""The small model of chapter 4 and its parameters seen as a dictionary of named tensors.

Continual learning and model merging both do arithmetic on weights: EWC pulls θ back towards an old θ*,
merging adds *task vectors* τ = θ_finetuned − θ_base to a base model. Here a model's parameters are a plain
``dict`` ``name -> tensor`` (``get_params`` reads it, ``set_params`` writes it back), and two such dicts must
agree parameter by parameter (same names, same shapes) before any arithmetic; a mismatch is a ``ValueError``
that names the parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "Params", "check_compatible", "get_params", "set_params", "task_vector"]

Params = dict[str, torch.Tensor]


class MLP(nn.Module):
    """x: (B, d_in) → logits (B, n_classes) through ReLU hidden layers ``layers.k`` and a linear ``head``."""

    def __init__(self, d_in: int = 64, hidden: Sequence[int] = (128, 128), n_classes: int = 10) -> None:
        super().__init__()
        for name, v in (("d_in", d_in), ("n_classes", n_classes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        hidden = tuple(hidden)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be positive ints, got {hidden}")
        widths = (d_in, *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(widths[-1], n_classes)
        self.d_in, self.hidden, self.n_classes = d_in, hidden, n_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, d_in) → the last hidden representation (B, hidden[-1]) (x itself when there is no hidden layer)."""
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"x must be (B, {self.d_in}), got {tuple(x.shape)}")
        for layer in self.layers:
            x = F.relu(layer(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _as_params(obj: nn.Module | Mapping[str, torch.Tensor], what: str) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return dict(obj.named_parameters())
    if isinstance(obj, Mapping):
        for name, value in obj.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{what}[{name!r}] must be a tensor, got {type(value).__name__}")
        return obj
    raise ValueError(f"{what} must be an nn.Module or a dict name -> tensor, got {type(obj).__name__}")


def check_compatible(
    a: nn.Module | Mapping[str, torch.Tensor], b: nn.Module | Mapping[str, torch.Tensor],
    names: tuple[str, str] = ("a", "b"),
) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same parameter names with the same shapes."""
    pa, pb = _as_params(a, names[0]), _as_params(b, names[1])
    only_a, only_b = sorted(set(pa) - set(pb)), sorted(set(pb) - set(pa))
    if only_a or only_b:
        parts = [f"{name!r} only in {names[0]}" for name in only_a]
        parts += [f"{name!r} only in {names[1]}" for name in only_b]
        raise ValueError(f"{names[0]} and {names[1]} must have the same parameter names: {'; '.join(parts)}")
    for name in pa:
        if pa[name].shape != pb[name].shape:
            raise ValueError(f"parameter {name!r} must have the same shape in {names[0]} and {names[1]}, "
                             f"got {tuple(pa[name].shape)} and {tuple(pb[name].shape)}")


def get_params(model: nn.Module | Mapping[str, torch.Tensor]) -> Params:
    """A detached copy of the parameters: ``name -> tensor`` (a dict is copied the same way)."""
    return {name: p.detach().clone() for name, p in _as_params(model, "model").items()}


def set_params(model: nn.Module, params: Mapping[str, torch.Tensor]) -> nn.Module:
    """Copy ``params`` (``name -> tensor``, every name of the model, same shapes) into ``model`` in place.

    Checks everything before writing anything, so a bad dict leaves the model untouched. Returns ``model``.
    """
    check_compatible(model, params, ("model", "params"))
    current = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in current.items():
            p.copy_(params[name])
    return model


ParamSource = nn.Module | Mapping[str, torch.Tensor]


def task_vector(finetuned: ParamSource, base: ParamSource) -> Params:
    """τ = θ_finetuned − θ_base, parameter by parameter (a dict ``name -> tensor``, detached).

    Both arguments may be models or parameter dicts; their names and shapes must match.
    """
    check_compatible(finetuned, base, ("finetuned", "base"))
    pf, pb = _as_params(finetuned, "finetuned"), _as_params(base, "base")
    return {name: (pf[name].detach() - pb[name].detach()) for name in pf}
