"""labkit.kernels.tree_attend: every available backend against the torch reference, the tree helpers, and
the error messages.

Triton runs here through its CPU interpreter (TRITON_INTERPRET=1, set in conftest.py): its shapes stay
small and its tiles large (each interpreted program costs about a millisecond).
"""

from __future__ import annotations

import pytest
import torch

from labkit.kernels import available_backends, tree_attend
from labkit.kernels.tree_attend import ancestor_bitsets, reference, tree_mask

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(
        name not in CPU_BACKENDS, reason=f"{name} is not available here (not installed, or no interpreter)"))
    for name in ("torch", "numba", "triton")
]


def make_parents(N: int, kind: str, seed: int = 0) -> torch.Tensor:
    """A topologically ordered tree (or forest) of N nodes: parents[i] < i, -1 for a root."""
    g = torch.Generator().manual_seed(seed)
    if kind == "chain":  # one path: causal attention over the new tokens
        return torch.arange(N) - 1
    if kind == "star":  # one root, every other node its child
        return torch.tensor([-1] + [0] * (N - 1))[:N]
    if kind == "forest":  # several roots
        return torch.tensor([int(torch.randint(-1, i, (1,), generator=g)) if i % 5 else -1 for i in range(N)])
    if kind == "random":  # one root, random parents
        return torch.tensor([-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, N)])
    raise ValueError(kind)


def make(B, H, N, P, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, H, N, D), (B, H, P, D), (B, H, P, D), (B, H, N, D), (B, H, N, D))
    return tuple(torch.randn(*shape, generator=g).to(dtype) for shape in shapes)


def some_prefix_len(B, P, seed=0):
    """Valid prefix lengths in 0..P that include both ends whenever B allows."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, P + 1, (B,), generator=g)
    lengths[0] = 0
    if B > 1:
        lengths[-1] = P
    return lengths


def close(out, ref, dtype=torch.float32):
    tol = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


# (B, H, N, P, D, tree): N = 1, P = 0 and 1, odd sizes everywhere, N > 64 (two bitset words, two query
# blocks), N = 64 (bit 63 is the sign bit of an int64 word), and sizes for Numba's multi-threaded path.
CASES = [
    (1, 1, 1, 0, 8, "chain"),
    (2, 1, 1, 1, 16, "chain"),
    (2, 3, 7, 33, 17, "random"),
    (1, 2, 5, 1, 8, "star"),
    (3, 1, 64, 9, 16, "chain"),
    (1, 2, 70, 5, 32, "forest"),
    (2, 1, 130, 0, 24, "random"),
    (1, 8, 64, 300, 64, "random"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}H{}N{}P{}D{}-{}".format(*c))
@pytest.mark.parametrize("masked", [False, True], ids=["full", "prefix_len"])
def test_matches_reference_fp32(backend, case, masked):
    B, H, N, P, D, kind = case
    q, Kp, Vp, Kt, Vt = make(B, H, N, P, D, seed=N + P + D)
    parents = make_parents(N, kind, seed=N)
    prefix_len = some_prefix_len(B, P, seed=D) if masked else None
    out = tree_attend(q, Kp, Vp, Kt, Vt, parents, prefix_len, backend=backend)
    close(out, reference(q, Kp, Vp, Kt, Vt, parents, prefix_len))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["chain", "star", "forest", "random"])
def test_every_tree_shape(backend, kind):
    q, Kp, Vp, Kt, Vt = make(2, 2, 37, 20, 16, seed=7)
    parents = make_parents(37, kind, seed=3)
    close(tree_attend(q, Kp, Vp, Kt, Vt, parents, backend=backend), reference(q, Kp, Vp, Kt, Vt, parents))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_in_half_out(backend, dtype):
    q, Kp, Vp, Kt, Vt = make(2, 3, 19, 45, 32, dtype=dtype, seed=1)
    parents, prefix_len = make_parents(19, "random", seed=1), torch.tensor([3, 45])
    out = tree_attend(q, Kp, Vp, Kt, Vt, parents, prefix_len, backend=backend)
    close(out, reference(q, Kp, Vp, Kt, Vt, parents, prefix_len), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    B, H, N, P, D = 2, 3, 11, 40, 24
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, N, H, D, generator=g).transpose(1, 2)  # (B, H, N, D) view of a (B, N, H, D) tensor
    Kp = torch.randn(B, P, H, D, generator=g).transpose(1, 2)  # like a (B, T, H, D) cache
    Vp = torch.randn(B, H, P, 2 * D, generator=g)[..., ::2]  # strided last dimension
    Kt = torch.randn(B, H, D, N, generator=g).transpose(2, 3)
    Vt = torch.randn(H, B, N, D, generator=g).transpose(0, 1)
    assert not any(x.is_contiguous() for x in (q, Kp, Vp, Kt, Vt))
    parents, prefix_len = make_parents(N, "random", seed=2), torch.tensor([P, 9])
    out = tree_attend(q, Kp, Vp, Kt, Vt, parents, prefix_len, backend=backend)
    close(out, reference(q, Kp, Vp, Kt, Vt, parents, prefix_len))


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_and_rising_scores_stay_stable(backend):
    """Scores that climb along the prefix move the running max in every tile; huge ones must not overflow."""
    B, H, N, P, D = 1, 2, 9, 300, 16
    q, _, Vp, Kt, Vt = make(B, H, N, P, D, seed=4)
    ramp = torch.linspace(0, 1, P)[None, None, :, None]
    Kp = ramp * q[:, :, :1, :] * 50.0  # score(t) grows with t, up to ~50 * |q|^2
    parents = make_parents(N, "chain")
    out = tree_attend(q, Kp, Vp, Kt * 30.0, Vt, parents, scale=0.7, backend=backend)
    assert torch.isfinite(out).all()
    close(out, reference(q, Kp, Vp, Kt * 30.0, Vt, parents, scale=0.7))


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton is not importable or not interpreted here")
def test_triton_small_tiles_cross_blocks_and_words():
    """Tiles of 16: several query blocks, prefix tiles and tree tiles, bitset words read across tiles."""
    from labkit.kernels.tree_attend import triton_tree_attend

    q, Kp, Vp, Kt, Vt = make(2, 1, 70, 37, 16, seed=5)
    parents, prefix_len = make_parents(70, "random", seed=5), torch.tensor([0, 37])
    out = triton_tree_attend(q, Kp, Vp, Kt, Vt, parents, prefix_len, block_n=16, block_t=16)
    close(out, reference(q, Kp, Vp, Kt, Vt, parents, prefix_len))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 2, 5, 3, 8), (2, 2, 0, 3, 8)], ids=["B0", "N0"])
def test_empty_batch_or_tree(backend, shape):
    q, Kp, Vp, Kt, Vt = make(*shape)
    N = shape[2]
    assert tree_attend(q, Kp, Vp, Kt, Vt, make_parents(N, "chain"), backend=backend).shape == q.shape


def test_reference_is_attention_over_prefix_and_ancestors():
    """The spec against its definition, one query at a time: keys = valid prefix + the node's path."""
    B, H, N, P, D = 2, 2, 9, 6, 8
    q, Kp, Vp, Kt, Vt = make(B, H, N, P, D, seed=9)
    parents, prefix_len = make_parents(N, "random", seed=9), torch.tensor([2, 6])
    out = reference(q, Kp, Vp, Kt, Vt, parents, prefix_len)
    for b in range(B):
        for i in range(N):
            path, node = [], i
            while node >= 0:
                path.append(node)
                node = int(parents[node])
            n = int(prefix_len[b])
            K = torch.cat([Kp[b, :, :n], Kt[b][:, path]], dim=1)  # (H, n + len(path), D)
            V = torch.cat([Vp[b, :, :n], Vt[b][:, path]], dim=1)
            w = torch.softmax(torch.einsum("hd,htd->ht", q[b, :, i], K) / D**0.5, dim=-1)
            close(out[b, :, i], torch.einsum("ht,htd->hd", w, V))


def test_reference_keeps_gradients():
    q, Kp, Vp, Kt, Vt = (x.requires_grad_() for x in make(1, 2, 5, 4, 8))
    tree_attend(q, Kp, Vp, Kt, Vt, make_parents(5, "star"), backend="torch").sum().backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (q, Kp, Vp, Kt, Vt))


# ---- the tree helpers ----------------------------------------------------------------------------------


def ancestors_or_self(parents, i):
    out = {i}
    while parents[i] >= 0:
        i = parents[i]
        out.add(i)
    return out


@pytest.mark.parametrize("N, kind", [(1, "chain"), (5, "star"), (64, "chain"), (65, "random"), (130, "forest")])
def test_bitsets_and_mask_match_the_definition(N, kind):
    parents = make_parents(N, kind, seed=N).tolist()
    bits, mask = ancestor_bitsets(parents), tree_mask(parents)
    assert bits.dtype == torch.int64 and bits.shape == (N, (N + 63) // 64)
    assert mask.dtype == torch.bool and mask.shape == (N, N)
    for i in range(N):
        expected = ancestors_or_self(parents, i)
        assert {j for j in range(N) if mask[i, j]} == expected
        assert {j for j in range(N) if (int(bits[i, j // 64]) >> (j % 64)) & 1} == expected


def test_bitsets_are_cached_but_returned_as_copies():
    parents = torch.tensor([-1, 0, 1, 1])
    first = ancestor_bitsets(parents)
    first.zero_()  # must not poison the cache
    assert ancestor_bitsets(parents).tolist() == [[1], [3], [7], [11]]


# ---- errors name the argument, what was expected and what was given ------------------------------------


@pytest.mark.parametrize(
    "parents, error, message",
    [
        ([-1, 1, 0], ValueError, r"parents\[i\] must lie in -1..i-1 .*, got parents\[1\] = 1"),
        ([-1, 0, -2], ValueError, r"got parents\[2\] = -2"),
        ([0, 0, 0], ValueError, r"got parents\[0\] = 0"),
        ([-1, 0], ValueError, r"parents must have shape \(N,\) = \(3,\) to match q, got \(2,\)"),
        (torch.tensor([[-1, 0, 0]]), ValueError, r"parents must be 1-D \(N,\), got shape \(1, 3\)"),
        (torch.tensor([-1.0, 0.0, 0.0]), TypeError, r"parents must hold integers, got torch.float32"),
        ([-1.0, 0.0, 0.0], TypeError, r"parents must hold integers, got float64"),
    ],
)
def test_bad_parents(parents, error, message):
    q, Kp, Vp, Kt, Vt = make(1, 2, 3, 4, 8)
    with pytest.raises(error, match=message):
        tree_attend(q, Kp, Vp, Kt, Vt, parents)


@pytest.mark.parametrize(
    "prefix_len, error, message",
    [
        (torch.tensor([-1, 3]), ValueError, r"prefix_len must lie in 0..P = 0..4, got values from -1 to 3"),
        (torch.tensor([1, 5]), ValueError, r"prefix_len must lie in 0..P = 0..4, got values from 1 to 5"),
        (torch.tensor([1, 2, 3]), ValueError, r"prefix_len must have shape \(B,\) = \(2,\), got \(3,\)"),
        (torch.tensor([1.0, 2.0]), TypeError, r"prefix_len must hold integers, got torch.float32"),
    ],
)
def test_bad_prefix_len(prefix_len, error, message):
    q, Kp, Vp, Kt, Vt = make(2, 2, 3, 4, 8)
    with pytest.raises(error, match=message):
        tree_attend(q, Kp, Vp, Kt, Vt, [-1, 0, 0], prefix_len)


def test_prefix_len_may_be_a_list():
    q, Kp, Vp, Kt, Vt = make(2, 2, 3, 4, 8)
    out = tree_attend(q, Kp, Vp, Kt, Vt, [-1, 0, 0], [0, 4], backend="torch")
    close(out, reference(q, Kp, Vp, Kt, Vt, [-1, 0, 0], torch.tensor([0, 4])))


@pytest.mark.parametrize(
    "which, shape, message",
    [
        ("q", (2, 3, 8), r"q must be 4-D \(B, H, N, D\), got shape \(2, 3, 8\)"),
        ("K_tree", (2, 3, 4, 8), r"K_tree must have q's shape \(B, H, N, D\) = \(2, 3, 5, 8\), got \(2, 3, 4, 8\)"),
        ("V_tree", (2, 3, 5, 7), r"V_tree must have q's shape"),
        ("K_prefix", (2, 2, 6, 8), r"K_prefix must have shape \(B, H, P, D\) = \(2, 3, P, 8\) to match q"),
        ("K_prefix", (2, 3, 6, 4), r"K_prefix must have shape \(B, H, P, D\)"),
        ("V_prefix", (2, 3, 7, 8), r"V_prefix must have K_prefix's shape \(2, 3, 6, 8\), got \(2, 3, 7, 8\)"),
    ],
)
def test_bad_shapes(which, shape, message):
    names = ("q", "K_prefix", "V_prefix", "K_tree", "V_tree")
    tensors = dict(zip(names, make(2, 3, 5, 6, 8)))
    tensors[which] = torch.zeros(shape)
    with pytest.raises(ValueError, match=message):
        tree_attend(*tensors.values(), [-1, 0, 0, 1, 1])


def test_bad_dtypes_devices_and_scale():
    q, Kp, Vp, Kt, Vt = make(1, 1, 2, 4, 8)
    parents = [-1, 0]
    with pytest.raises(TypeError, match=r"q must hold floating-point numbers .*, got torch.int64"):
        tree_attend(q.long(), Kp, Vp, Kt, Vt, parents)
    with pytest.raises(TypeError, match=r"must share one dtype, got q torch.float32, K_prefix torch.float16"):
        tree_attend(q, Kp.half(), Vp, Kt, Vt, parents)
    with pytest.raises(TypeError, match=r"V_tree must be a torch.Tensor, got ndarray"):
        tree_attend(q, Kp, Vp, Kt, Vt.numpy(), parents)
    with pytest.raises(ValueError, match=r"D >= 1, got D=0"):
        tree_attend(*(x[..., :0] for x in (q, Kp, Vp, Kt, Vt)), parents)
    with pytest.raises(ValueError, match=r"scale must be finite, got nan"):
        tree_attend(q, Kp, Vp, Kt, Vt, parents, scale=float("nan"))
    with pytest.raises(TypeError, match=r"scale must be a real number or None, got str"):
        tree_attend(q, Kp, Vp, Kt, Vt, parents, scale="1")
    with pytest.raises(ValueError, match=r"backend must be one of"):
        tree_attend(q, Kp, Vp, Kt, Vt, parents, backend="gpu")
