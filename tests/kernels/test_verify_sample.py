"""labkit.kernels.verify_sample: exact agreement of every backend with the reference, the edge cases of the
rule, the lossless property (the emitted tokens are distributed as the target's samples), and the errors.

Triton runs here through its CPU interpreter (TRITON_INTERPRET=1, set in conftest.py), so it gets fewer
and smaller cases than Numba.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit.kernels import available_backends, verify_sample
from labkit.kernels.verify_sample import reference

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(
        name not in CPU_BACKENDS, reason=f"{name} is not available here (not installed, or no interpreter)"))
    for name in ("torch", "numba", "triton")
]
FAST_BACKENDS = [b for b in BACKENDS if b.values[0] != "triton"]
ONE_BELOW_1 = float(np.nextafter(np.float32(1), np.float32(0)))  # the largest float32 uniform


def make_case(gamma, V, seed, temperature=1.0, closeness=0.5, dtype=torch.float32):
    """A round of speculative sampling: the draft's q is the target's p blurred by noise of size
    ``closeness`` (0: identical), the draft tokens are sampled from q, the uniforms are uniform."""
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(gamma + 1, V, generator=g, dtype=torch.float64)
    q = torch.softmax(logits[:gamma] / temperature + closeness * torch.randn(gamma, V, generator=g,
                                                                           dtype=torch.float64), dim=-1)
    tokens = torch.multinomial(q, 1, generator=g).flatten()
    uniforms = torch.rand(gamma + 1, generator=g)
    return logits.to(dtype), q.to(dtype), tokens, uniforms


def agree(case, temperature=1.0, greedy=False, backends=("numba", "triton")):
    """Every available backend returns exactly the reference's (n_accepted, token); returns that pair."""
    expected = reference(*case, temperature=temperature, greedy=greedy)
    for backend in backends:
        if backend in CPU_BACKENDS:
            got = verify_sample(*case, temperature=temperature, greedy=greedy, backend=backend)
            assert got == expected, f"{backend}: {got} != reference {expected}"
            assert all(type(x) is int for x in got)
    return expected


# ---- exact agreement -----------------------------------------------------------------------------------


def test_numba_agrees_exactly_on_many_random_rounds():
    seen = set()
    for seed in range(200):
        g = np.random.default_rng(seed)
        gamma, V = int(g.integers(1, 7)), int(g.integers(1, 700))
        temperature = float(g.choice([0.3, 1.0, 2.5]))
        closeness = float(g.choice([0.0, 0.1, 1.0, 3.0]))
        case = make_case(gamma, V, seed, temperature, closeness)
        n, _ = agree(case, temperature, backends=("numba",))
        seen.add(n == gamma)
    assert seen == {True, False}  # both a rejection and the bonus token were exercised


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton is not importable or not interpreted here")
def test_triton_agrees_exactly_on_random_rounds():
    from labkit.kernels.verify_sample import triton_verify_sample

    for seed in range(12):
        gamma, V, temperature = 1 + seed % 4, [1, 7, 100, 333][seed % 4], [0.7, 1.0, 1.3][seed % 3]
        case = make_case(gamma, V, seed, temperature, closeness=[0.0, 0.3, 2.0][seed % 3])
        expected = reference(*case, temperature=temperature)
        assert verify_sample(*case, temperature=temperature, backend="triton") == expected
        assert triton_verify_sample(*case, temperature, block_v=16) == expected  # the scan crosses tiles


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=["fp16", "bf16", "fp64"])
def test_other_dtypes_agree(backend, dtype):
    for seed in range(3):
        case = make_case(3, 50, seed, closeness=0.2, dtype=dtype)
        q = case[1].double()
        case = (case[0], (q / q.sum(dim=1, keepdim=True)).to(dtype), *case[2:])
        assert verify_sample(*case, backend=backend) == reference(*case)


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_accepts_while_draft_is_argmax(backend):
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0],   # a tie: the first maximum (1) wins
                           [5.0, 1.0, 1.0, 1.0],
                           [0.0, 0.0, 0.0, 9.0],
                           [1.0, 2.0, 7.0, -float("inf")]])
    expected = {(1, 0, 3): (3, 2), (3, 0, 3): (0, 1), (1, 2, 3): (1, 0), (1, 0, 0): (2, 3)}
    for draft, result in expected.items():
        tokens = torch.tensor(draft)
        assert verify_sample(logits, None, tokens, None, greedy=True, backend=backend) == result
        q = torch.full((3, 4), 0.25)
        assert verify_sample(logits, q, tokens, torch.rand(4), temperature=0.0, greedy=True,
                             backend=backend) == result


def test_greedy_agrees_on_random_rounds_with_ties():
    for seed in range(40):
        case = make_case(4, 30, seed)
        logits = case[0].round()  # integer logits: ties for the maximum are common
        tokens = logits[:4].argmax(dim=-1)
        tokens[seed % 5:] = (tokens[seed % 5:] + seed % 2) % 30  # reject somewhere, or never
        agree((logits, case[1], tokens, case[3]), greedy=True, backends=("numba",))


# ---- edge cases of the rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_cases(backend):
    def run(logits, q, tokens, uniforms, **kw):
        case = (torch.tensor(logits, dtype=torch.float32), torch.tensor(q, dtype=torch.float32),
                torch.tensor(tokens), torch.tensor(uniforms, dtype=torch.float32))
        got = verify_sample(*case, backend=backend, **kw)
        assert got == reference(*case, **kw)
        return got

    inf = float("inf")
    # V = 1: p = q = 1, every token accepted, the bonus token is token 0
    assert run([[0.0], [5.0], [1.0]], [[1.0], [1.0]], [0, 0], [ONE_BELOW_1, 0.5, ONE_BELOW_1]) == (2, 0)
    # u = 0 accepts any token the target allows ...
    assert run([[0.0, -20.0], [0.0, 0.0]], [[0.5, 0.5]], [1], [0.0, 0.0]) == (1, 0)
    # ... but never one it forbids (logit -inf: p = 0); the residual then has mass only on token 0
    assert run([[0.0, -inf], [0.0, 0.0]], [[0.5, 0.5]], [1], [0.0, ONE_BELOW_1]) == (0, 0)
    # a draft token the draft gave probability 0 is always accepted (the ratio is infinite)
    assert run([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.5, 0.5]], [0], [ONE_BELOW_1, 0.0]) == (1, 0)
    # the largest uniform still accepts when p >= q, and picks the last token with mass
    assert run([[0.0, 0.0, -inf], [0.0, 0.0, -inf]], [[0.5, 0.5, 0.0]], [1], [ONE_BELOW_1, ONE_BELOW_1]) == (1, 1)
    # the emitted uniform 0 picks the first token with mass: the residual max(0, p - q) is 0 on token 0
    assert run([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]], [0], [ONE_BELOW_1, 0.0]) == (0, 1)
    # temperature sharpens or flattens p
    for temperature in (0.05, 20.0):
        run([[3.0, 2.9, 0.0], [1.0, 0.0, 0.0]], [[0.2, 0.7, 0.1]], [1], [0.6, 0.3], temperature=temperature)


@pytest.mark.parametrize("backend", BACKENDS)
def test_residual_without_mass_samples_p(backend):
    """q >= p everywhere (q sums to 1.0005, within the tolerance): a rejection leaves no residual mass."""
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    p = torch.softmax(logits[0], dim=0)
    q = (p * 1.0005)[None].float()
    assert torch.cumsum(p, 0).tolist()[:3] == pytest.approx([0.224, 0.834, 0.970], abs=1e-3)
    for u_emit, token in ((0.0, 0), (0.5, 1), (ONE_BELOW_1, 3)):
        uniforms = torch.tensor([0.9999, u_emit])  # u q(x) >= p(x): reject token 1
        case = (logits.float(), q, torch.tensor([1]), uniforms)
        assert verify_sample(*case, backend=backend) == reference(*case) == (0, token)


# ---- the lossless property -------------------------------------------------------------------------------

CHI2_DF4_P1E4 = 23.51  # the chi-square statistic with 4 degrees of freedom exceeds this with probability 1e-4


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


def speculative_rounds(verify, trials=20000, gamma=3, V=5, temperature=0.7, seed=0):
    """Run ``trials`` rounds with the same logits and draft: return p and, for each position k, the counts of
    the token emitted there (over the rounds that emitted one: n_accepted >= k)."""
    rng = np.random.default_rng(seed)
    logits = torch.tensor(rng.normal(size=(gamma + 1, V)) * 1.5, dtype=torch.float32)
    p = torch.softmax(logits.double() / temperature, dim=-1).numpy()
    q = rng.dirichlet(np.ones(V), size=gamma)  # a draft that disagrees with the target
    q_t = torch.tensor(q, dtype=torch.float32)
    drafts = np.stack([rng.choice(V, size=trials, p=q[i] / q[i].sum()) for i in range(gamma)], axis=1)
    uniforms = torch.from_numpy(rng.random((trials, gamma + 1), dtype=np.float32))
    counts = np.zeros((gamma + 1, V))
    for t in range(trials):
        n, token = verify(logits, q_t, torch.from_numpy(drafts[t]), uniforms[t], temperature)
        emitted = list(drafts[t, :n]) + [token]
        for k, x in enumerate(emitted):
            counts[k, x] += 1
    return p, counts


def test_emitted_tokens_are_distributed_as_the_target():
    """Leviathan et al. (2023), Theorem 1: whatever the draft, each emitted token is a sample of p."""
    p, counts = speculative_rounds(lambda *a: verify_sample(*a, backend="auto"))
    for k in range(counts.shape[0]):
        assert counts[k].sum() > 500, f"too few rounds reached position {k}"
        stat = chi_square(counts[k], p[k])
        assert stat < CHI2_DF4_P1E4, f"position {k}: chi-square {stat:.1f}, counts {counts[k]}, p {p[k]}"


def test_the_statistic_catches_a_wrong_rule():
    """Resampling a rejected token from p instead of the residual max(0, p - q) biases the output."""
    def resample_from_p(logits, q, tokens, uniforms, temperature):
        n, _ = verify_sample(logits, q, tokens, uniforms, temperature, backend="auto")
        p = torch.softmax(logits[n].double() / temperature, dim=-1)
        return n, int(torch.searchsorted(torch.cumsum(p, 0), uniforms[-1:].double(), right=True).clamp(max=4))

    p, counts = speculative_rounds(resample_from_p, trials=5000)
    assert chi_square(counts[0], p[0]) > CHI2_DF4_P1E4


# ---- errors name the argument, what was expected and what was given ------------------------------------


def good(gamma=2, V=4):
    return make_case(gamma, V, seed=0)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda c: (c[0], c[1][:, :3], c[2], c[3]), ValueError,
         r"draft_probs must have the vocabulary of target_logits, V = 4 columns, got 3"),
        (lambda c: (c[0], c[1][:1], c[2], c[3]), ValueError, r"draft_probs must have shape \(γ, V\) = \(2, 4\)"),
        (lambda c: (c[0][:2], c[1], c[2], c[3]), ValueError, r"target_logits must have γ\+1 = 3 rows"),
        (lambda c: (c[0][:1], c[1][:0], c[2][:0], c[3][:1]), ValueError, r"γ >= 1 tokens, got γ=0"),
        (lambda c: (c[0][0], c[1], c[2], c[3]), ValueError, r"target_logits must be 2-D \(γ\+1, V\)"),
        (lambda c: (c[0], c[1], c[2], c[3][:2]), ValueError, r"uniforms must have shape \(γ\+1,\) = \(3,\)"),
        (lambda c: (c[0], c[1], c[2].float(), c[3]), TypeError, r"draft_tokens must hold integers"),
        (lambda c: (c[0], c[1], c[2] + 4, c[3]), ValueError, r"draft_tokens must lie in 0..V-1 = 0..3"),
        (lambda c: (c[0], c[1] * 1.1, c[2], c[3]), ValueError, r"draft_probs rows must sum to 1"),
        (lambda c: (c[0], c[1] - c[1].max(), c[2], c[3]), ValueError, r"draft_probs must hold non-negative"),
        (lambda c: (c[0], c[1], c[2], c[3] + 1), ValueError, r"uniforms must lie in \[0, 1\)"),
        (lambda c: (c[0] * float("nan"), c[1], c[2], c[3]), ValueError, r"target_logits must not hold NaN"),
        (lambda c: (c[0] - float("inf"), c[1], c[2], c[3]), ValueError, r"finite logit, got row 0 all -inf"),
        (lambda c: (c[0].long(), c[1], c[2], c[3]), TypeError, r"target_logits must hold floating-point"),
        (lambda c: (c[0], None, c[2], c[3]), ValueError, r"draft_probs is required unless greedy=True"),
        (lambda c: (c[0], c[1].numpy(), c[2], c[3]), TypeError, r"draft_probs must be a torch.Tensor"),
    ],
)
def test_bad_inputs(change, error, message):
    with pytest.raises(error, match=message):
        verify_sample(*change(good()))


def test_bad_temperature_and_backend():
    case = good()
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match=r"temperature must be > 0 \(or use greedy=True\)"):
            verify_sample(*case, temperature=bad)
    with pytest.raises(TypeError, match=r"temperature must be a real number, got str"):
        verify_sample(*case, temperature="1")
    with pytest.raises(TypeError, match=r"greedy must be a bool, got int"):
        verify_sample(*case, greedy=1)
    with pytest.raises(ValueError, match=r"backend must be one of"):
        verify_sample(*case, backend="cuda")
    verify_sample(*case, temperature=0.0, greedy=True)  # greedy ignores the temperature
