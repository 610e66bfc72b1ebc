"""labkit.kernels.ppr: every backend against the torch reference on random graphs (dangling nodes, self loops,
isolated nodes, duplicate edges, zero weights), B = 1, 1-D input, tiny N, fp32, the fixed-point equation, equality
with networkx.pagerank(personalization=...), and the error messages. Triton runs through its CPU interpreter."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from labkit.kernels import available_backends
from labkit.kernels.ppr import Transition, ppr, ppr_transition, reference

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in CPU_BACKENDS, reason=f"{name} is not available here"))
    for name in ("torch", "numba", "triton")
]


def random_graph(N: int, E: int, seed: int, n_isolated: int = 0, n_dangling: int = 0):
    """A directed weighted multigraph as adjacency CSR; the last n_isolated nodes have no edges at all, the n_dangling
    before them no out-edges; some self loops, duplicate edges and zero weights."""
    g = torch.Generator().manual_seed(seed)
    live = N - n_isolated
    has_out = live - n_dangling
    src = torch.randint(0, max(has_out, 1), (E,), generator=g)
    dst = torch.randint(0, max(live, 1), (E,), generator=g)
    src[: E // 10], dst[: E // 10] = src[: E // 10], src[: E // 10]  # self loops
    w = torch.rand(E, generator=g, dtype=torch.float64) + 0.05
    w[E // 10: E // 10 + 2] = 0.0  # zero weights are allowed
    if has_out <= 0:
        src, dst, w = src[:0], dst[:0], w[:0]
    order = torch.argsort(src * N + dst, stable=True)
    src, dst, w = src[order], dst[order], w[order]
    indptr = torch.zeros(N + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(src, minlength=N), 0)
    return indptr, dst, w


def random_personalization(B: int, N: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.zeros(B, N, dtype=dtype)
    for b in range(B):
        seeds = torch.randint(0, N, (1 + b % 3,), generator=g)
        s[b, seeds] = torch.rand(seeds.numel(), generator=g, dtype=dtype) + 0.1
    if B > 1:
        s[-1] = torch.rand(N, generator=g, dtype=dtype)  # a dense one
    return s


def check_close(out, ref, atol):
    (r, it), (r_ref, it_ref) = out, ref
    assert r.shape == r_ref.shape and r.dtype == r_ref.dtype
    torch.testing.assert_close(r, r_ref, atol=atol, rtol=0)
    assert (it - it_ref).abs().max() <= 1  # a residual right at tol may stop one step apart in another order


def top_sets(r, k=10):
    return [set(torch.topk(row, min(k, row.numel())).indices.tolist()) for row in r]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N, E, B, iso, dang", [(1, 0, 1, 0, 0), (2, 3, 1, 0, 1), (37, 120, 5, 3, 4),
                                                 (300, 1500, 3, 10, 20)], ids=str)
def test_matches_reference(backend, N, E, B, iso, dang):
    indptr, indices, w = random_graph(N, E, seed=N, n_isolated=iso, n_dangling=dang)
    s = random_personalization(B, N, seed=N + 1)
    graph = ppr_transition(indptr, indices, w)
    alpha, tol = (0.3, 1e-10) if backend != "triton" else (0.5, 1e-8)  # the interpreter is slow per iteration
    ref = reference(graph, s, alpha, tol, 500)
    out = ppr((indptr, indices, w), s, alpha=alpha, tol=tol, max_iter=500, backend=backend)
    check_close(out, ref, atol=10 * tol)
    assert out[1].max() < 500
    torch.testing.assert_close(out[0].sum(1), torch.ones(B, dtype=torch.float64))  # a probability vector
    if N > 10:
        # top-10 sets, ignoring scores tied within 1e-9 at the boundary
        for row, ref_row in zip(out[0], ref[0], strict=True):
            kth = torch.topk(ref_row, 10).values[-1]
            assert set(torch.nonzero(row > kth + 1e-9).flatten().tolist()) <= set(torch.topk(row, 10).indices.tolist())
            assert top_sets(row[None])[0] == top_sets(ref_row[None])[0] or (ref_row - kth).abs().lt(1e-9).sum() > 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixed_point_fp32_single_query(backend):
    """The answer satisfies r = (1-α)(P r + m s) + α s; fp32 in, fp32 out; a 1-D personalization gives 1-D out."""
    N = 50
    indptr, indices, w = random_graph(N, 200, seed=7, n_dangling=5)
    graph = ppr_transition(indptr, indices, w)
    s = random_personalization(1, N, seed=8)[0]
    r, it = ppr(graph, s.float(), alpha=0.4, tol=1e-7, backend=backend)
    assert r.shape == (N,) and r.dtype == torch.float32 and it.dim() == 0
    r64, _ = ppr(graph, s, alpha=0.4, tol=1e-12, max_iter=1000, backend=backend)
    P = torch.zeros(N, N, dtype=torch.float64)
    rows = torch.repeat_interleave(torch.arange(N), graph.in_ptr[1:] - graph.in_ptr[:-1])
    P.index_put_((rows, graph.in_src), graph.in_p, accumulate=True)
    sn = s / s.sum()
    m = r64[graph.dangling].sum()
    torch.testing.assert_close(r64, 0.6 * (P @ r64 + m * sn) + 0.4 * sn, atol=1e-11, rtol=0)
    torch.testing.assert_close(r.double(), r64, atol=2e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_networkx(backend):
    """networkx's alpha is the damping 1 - α; its tol is ours / N; dangling mass goes to the personalization."""
    G = nx.gnm_random_graph(80, 260, seed=3, directed=True)
    G.add_edge(4, 4)
    G.remove_edges_from(list(G.out_edges([5, 6])))  # dangling
    G.add_node(80)  # isolated
    gen = torch.Generator().manual_seed(4)
    for u, v in G.edges:
        G[u][v]["weight"] = 0.1 + float(torch.rand(1, generator=gen))
    N = G.number_of_nodes()
    A = nx.to_scipy_sparse_array(G, nodelist=range(N), weight="weight", format="csr")
    graph = (torch.from_numpy(A.indptr).long(), torch.from_numpy(A.indices).long(), torch.from_numpy(A.data))
    s = random_personalization(3, N, seed=5)
    alpha = 0.15 if backend != "triton" else 0.5
    r, _ = ppr(graph, s, alpha=alpha, tol=1e-12, max_iter=1000, backend=backend)
    for b in range(3):
        want = nx.pagerank(G, alpha=1 - alpha, personalization={i: float(s[b, i]) for i in range(N)},
                           tol=1e-15, max_iter=2000, weight="weight")
        torch.testing.assert_close(r[b], torch.tensor([want[i] for i in range(N)], dtype=torch.float64),
                                   atol=1e-10, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_iter_and_batch_independence(backend):
    """max_iter caps the iterations; each query's answer does not depend on the others in the batch."""
    N = 40
    indptr, indices, w = random_graph(N, 150, seed=9, n_dangling=3)
    graph = ppr_transition(indptr, indices, w)
    s = random_personalization(4, N, seed=10)
    r, it = ppr(graph, s, alpha=0.2, tol=1e-9, max_iter=3, backend=backend)
    assert it.tolist() == [3, 3, 3, 3]
    torch.testing.assert_close(r, reference(graph, s, 0.2, 1e-9, 3)[0], atol=1e-12, rtol=0)
    r_all, it_all = ppr(graph, s, alpha=0.5, tol=1e-9, backend=backend)
    for b in (0, 3):
        r_one, it_one = ppr(graph, s[b], alpha=0.5, tol=1e-9, backend=backend)
        assert int(it_one) == int(it_all[b])
        torch.testing.assert_close(r_one, r_all[b], atol=1e-14, rtol=0)


def test_transition():
    """Columns of P sum to 1 except at dangling nodes; duplicates add up."""
    indptr = torch.tensor([0, 3, 3, 4])  # 0 -> 1 (w 1), 0 -> 1 (w 1), 0 -> 2 (w 2); 1 dangling; 2 -> 2
    indices = torch.tensor([1, 1, 2, 2])
    t = ppr_transition(indptr, indices, torch.tensor([1.0, 1.0, 2.0, 3.0]))
    assert isinstance(t, Transition) and t.n_nodes == 3
    assert t.dangling.tolist() == [False, True, False]
    assert t.in_ptr.tolist() == [0, 0, 2, 4]
    assert t.in_src.tolist() == [0, 0, 0, 2]
    torch.testing.assert_close(t.in_p, torch.tensor([0.25, 0.25, 0.5, 1.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"alpha": 0.0}, ValueError, r"alpha must be in \(0, 1\).*got 0.0"),
        ({"alpha": 1.0}, ValueError, r"alpha must be in \(0, 1\)"),
        ({"tol": 0}, ValueError, r"tol must be a positive finite number, got 0"),
        ({"max_iter": 0}, ValueError, r"max_iter must be an integer >= 1, got 0"),
        ({"personalization": torch.ones(2, 3, 4)}, ValueError, r"personalization must have shape \(B, N\)"),
        ({"personalization": torch.ones(2, 4)}, ValueError, r"indptr must have N\+1 = 5 entries"),
        ({"personalization": -torch.ones(2, 3)}, ValueError, r"personalization must be >= 0"),
        ({"personalization": torch.tensor([[1.0, 0, 0], [0, 0, 0]])}, ValueError, r"rows \[1\] summing to 0"),
        ({"personalization": torch.ones(2, 3, dtype=torch.long)}, TypeError, r"floating-point"),
        ({"weights": torch.tensor([1.0, -1.0, 1.0])}, ValueError, r"weights must be >= 0"),
        ({"weights": torch.tensor([1.0, 1.0])}, ValueError, r"weights must have shape \(E,\) = \(3,\), got \(2,\)"),
        ({"indices": torch.tensor([0, 1, 3])}, ValueError, r"indices must lie in 0..N-1 = 0..2"),
        ({"indptr": torch.tensor([0, 2, 1, 3])}, ValueError, r"indptr must be non-decreasing"),
        ({"indptr": torch.tensor([0, 1, 2, 2])}, ValueError, r"indptr must start at 0 and end at len\(indices\) = 3"),
        ({"backend": "gpu"}, ValueError, r"backend must be one of"),
    ],
)
def test_bad_inputs(kwargs, error, message):
    args = {"indptr": torch.tensor([0, 1, 2, 3]), "indices": torch.tensor([1, 2, 0]), "weights": None,
            "personalization": torch.ones(2, 3)} | kwargs
    extra = {k: args.pop(k) for k in ("alpha", "tol", "max_iter", "backend") if k in args}
    with pytest.raises(error, match=message):
        ppr((args["indptr"], args["indices"], args["weights"]), args["personalization"], **extra)


def test_graph_size_mismatch():
    t = ppr_transition(torch.tensor([0, 1, 2]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"personalization must have N = graph.n_nodes = 2 columns, got 3"):
        ppr(t, torch.ones(3))
