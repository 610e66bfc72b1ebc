"""labkit.kernels.attend: every available backend against the torch reference, plus the error messages.

Triton runs here through its CPU interpreter (TRITON_INTERPRET=1, set in conftest.py), so its shapes
stay small: each interpreted program costs about half a millisecond.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from labkit.kernels import _dispatch, attend, available_backends
from labkit.kernels.attend import reference

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(
        name not in CPU_BACKENDS, reason=f"{name} is not available here (not installed, or no interpreter)"))
    for name in ("torch", "numba", "triton")
]
# (B, H, T, D): T=1, odd D, odd B*H, T not a multiple of any block, T spanning several blocks, and one
# large enough (B*H*T*D >= 2**16) for Numba's multi-threaded path rather than its single-core one.
SHAPES = [(1, 1, 1, 8), (2, 3, 17, 33), (3, 1, 64, 17), (1, 5, 130, 64), (2, 2, 300, 16), (2, 3, 700, 32)]


def make(B, H, T, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, H, D), (B, H, T, D), (B, H, T, D))
    q, K, V = (torch.randn(*shape, generator=g).to(dtype) for shape in shapes)
    return q, K, V


def some_lengths(B, T, seed=0):
    """Valid lengths in 1..T that include both ends (1 and T) whenever B allows."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = 1
    if B > 1:
        lengths[-1] = T
    return lengths


def close(out, ref, dtype=torch.float32):
    tol = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}T{}D{}".format(*s))
@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
def test_matches_reference_fp32(backend, shape, masked):
    B, H, T, D = shape
    q, K, V = make(*shape, seed=T + D)
    lengths = some_lengths(B, T, seed=D) if masked else None
    close(attend(q, K, V, lengths, backend=backend), reference(q, K, V, lengths))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_in_half_out(backend, dtype):
    q, K, V = make(2, 3, 77, 32, dtype=dtype, seed=1)
    lengths = torch.tensor([5, 77])
    out = attend(q, K, V, lengths, backend=backend)
    close(out, reference(q, K, V, lengths), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    B, H, T, D = 2, 3, 40, 24
    g = torch.Generator().manual_seed(3)
    q = torch.randn(H, B, D, generator=g).transpose(0, 1)  # (B, H, D) view
    K = torch.randn(B, T, H, D, generator=g).transpose(1, 2)  # (B, H, T, D) view, like a (B, T, H, D) cache
    V = torch.randn(B, H, T, 2 * D, generator=g)[..., ::2]  # strided last dimension
    assert not (q.is_contiguous() or K.is_contiguous() or V.is_contiguous())
    lengths = torch.tensor([T, 9])
    close(attend(q, K, V, lengths, backend=backend), reference(q, K, V, lengths))


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_and_rising_scores_stay_stable(backend):
    """Scores that climb along T move the running max in every block; huge ones must not overflow."""
    B, H, T, D = 1, 2, 200, 16
    q, _, V = make(B, H, T, D, seed=4)
    ramp = torch.linspace(0, 1, T)[None, None, :, None]
    K = ramp * q[:, :, None, :] * 50.0  # score(t) grows with t, up to ~50 * |q|^2
    out = attend(q, K, V, scale=0.7, backend=backend)
    assert torch.isfinite(out).all()
    close(out, reference(q, K, V, scale=0.7))


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton is not importable or not interpreted here")
@pytest.mark.parametrize("n_splits", [1, 3, 8])
def test_triton_merges_splits_including_empty_ones(n_splits):
    from labkit.kernels.attend import triton_attend

    q, K, V = make(3, 2, 100, 20, seed=5)
    lengths = torch.tensor([1, 37, 100])  # row 0 leaves every split but the first empty
    out = triton_attend(q, K, V, lengths, block_t=16, n_splits=n_splits)
    close(out, reference(q, K, V, lengths))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    q, K, V = make(0, 2, 5, 8)
    assert attend(q, K, V, backend=backend).shape == (0, 2, 8)


def test_auto_follows_setup_when_it_fits(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("labkit.runtime._CURRENT", None)  # as before any labkit.setup()
    assert _dispatch.resolve_backend("auto", cpu, "attend") == ("numba" if _dispatch.has_numba() else "torch")
    monkeypatch.setattr("labkit.runtime._CURRENT", SimpleNamespace(backend="torch"))  # setup(backend="torch")
    assert _dispatch.resolve_backend("auto", cpu, "attend") == "torch"
    # numba never runs CUDA tensors: a setup that chose it falls back to the device's default there
    monkeypatch.setattr("labkit.runtime._CURRENT", SimpleNamespace(backend="numba"))
    assert _dispatch.resolve_backend("auto", torch.device("cuda"), "attend") in ("triton", "torch")
    q, K, V = make(2, 2, 9, 8)
    close(attend(q, K, V), reference(q, K, V))


# ---- errors name the argument, what was expected and what was given ------------------------------------


def test_empty_cache_is_an_error():
    q, K, V = make(2, 2, 0, 8)
    with pytest.raises(ValueError, match=r"K must hold at least one position \(T >= 1\), got T=0"):
        attend(q, K, V)


@pytest.mark.parametrize(
    "shapes, message",
    [
        (((2, 8), (2, 3, 5, 8), (2, 3, 5, 8)), r"q must be 3-D \(B, H, D\), got shape \(2, 8\)"),
        (((2, 3, 8), (2, 5, 8), (2, 5, 8)), r"K must be 4-D \(B, H, T, D\), got shape \(2, 5, 8\)"),
        (((2, 3, 8), (2, 3, 5, 8), (2, 3, 6, 8)), r"V must have K's shape \(2, 3, 5, 8\)"),
        (((2, 3, 4), (2, 3, 5, 8), (2, 3, 5, 8)), r"q must have shape \(B, H, D\) = \(2, 3, 8\)"),
        (((2, 3, 0), (2, 3, 5, 0), (2, 3, 5, 0)), r"D >= 1, got D=0"),
    ],
)
def test_bad_shapes(shapes, message):
    q, K, V = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=message):
        attend(q, K, V)


@pytest.mark.parametrize(
    "lengths, error, message",
    [
        (torch.tensor([0, 3]), ValueError, r"lengths must lie in 1..T = 1..5, got values from 0 to 3"),
        (torch.tensor([1, 6]), ValueError, r"lengths must lie in 1..T = 1..5, got values from 1 to 6"),
        (torch.tensor([1, 2, 3]), ValueError, r"lengths must have shape \(B,\) = \(2,\), got \(3,\)"),
        (torch.tensor([[1, 2]]), ValueError, r"lengths must have shape \(B,\)"),
        (torch.tensor([1.0, 2.0]), TypeError, r"lengths must hold integers, got torch.float32"),
        (torch.tensor([True, True]), TypeError, r"lengths must hold integers, got torch.bool"),
    ],
)
def test_bad_lengths(lengths, error, message):
    q, K, V = make(2, 3, 5, 8)
    with pytest.raises(error, match=message):
        attend(q, K, V, lengths)


def test_lengths_may_be_a_list():
    q, K, V = make(2, 3, 5, 8)
    close(attend(q, K, V, [2, 5], backend="torch"), reference(q, K, V, torch.tensor([2, 5])))


def test_bad_dtypes_and_scale():
    q, K, V = make(1, 1, 4, 8)
    with pytest.raises(TypeError, match=r"q must hold floating-point numbers .*, got torch.int64"):
        attend(q.long(), K, V)
    with pytest.raises(TypeError, match=r"one dtype, got q torch.float32, K torch.float16, V torch.float32"):
        attend(q, K.half(), V)
    with pytest.raises(TypeError, match=r"K must be a torch.Tensor, got ndarray"):
        attend(q, K.numpy(), V)
    with pytest.raises(ValueError, match=r"scale must be finite, got inf"):
        attend(q, K, V, scale=float("inf"))
    with pytest.raises(TypeError, match=r"scale must be a real number or None, got str"):
        attend(q, K, V, scale="0.1")


def test_bad_backend_name():
    q, K, V = make(1, 1, 4, 8)
    expected = r"backend must be one of \('auto', 'torch', 'numba', 'triton'\), got 'cuda'"
    with pytest.raises(ValueError, match=expected):
        attend(q, K, V, backend="cuda")


def test_backend_that_cannot_run_here(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with pytest.raises(ValueError, match=r"backend='numba' runs on CPU tensors only, got tensors on cuda"):
        _dispatch.check_backend("numba", cuda, "attend")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if _dispatch.has_triton():
        expected = r"backend='triton' needs CUDA tensors, got tensors on cpu.*TRITON_INTERPRET=1"
        with pytest.raises(ValueError, match=expected):
            _dispatch.check_backend("triton", cpu, "attend")
    monkeypatch.setattr(_dispatch, "has_triton", lambda: False)
    with pytest.raises(RuntimeError, match=r"backend='triton' needs the triton package"):
        _dispatch.check_backend("triton", cuda, "attend")
    assert "triton" not in _dispatch.available_backends("cpu")
