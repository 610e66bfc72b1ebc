"""The Lab 3 checks (labkit.check.memory) pass correct answers and bite on wrong ones, stubs and `...`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from lab_answers import answer_factory, contract_tests, expect_hint
from numba import njit

import labkit.check.memory as checks

_spec = importlib.util.spec_from_file_location(
    "_wrong_lab03_unit", Path(__file__).resolve().parents[1] / "labs" / "wrong_lab03.py")
_wrong = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_wrong)
WRONG = _wrong.WRONG

torch.set_num_threads(1)  # two cores shared with other jobs


# ------------------------------------------------------------------------- correct answers (as a student)


def linear_memory(q, k, v):
    T, Dk = k.shape
    S = torch.zeros(Dk, v.shape[1], dtype=v.dtype)
    outs = []
    for t in range(T):
        S = S + torch.outer(k[t], v[t])
        outs.append(S.T @ q[t])
    return torch.stack(outs), S


def delta_update(S, k, v, beta):
    return S - beta * torch.outer(k, S.T @ k - v)


def gated_delta_memory(q, k, v, beta, alpha):
    T, Dk = k.shape
    S = torch.zeros(Dk, v.shape[1], dtype=v.dtype)
    outs = []
    for t in range(T):
        S = alpha[t] * S
        u = beta[t] * (v[t] - S.T @ k[t])
        S = S + torch.outer(k[t], u)
        outs.append(S.T @ q[t])
    return torch.stack(outs), S


def delta_chunk(S, Q, K, V, beta):
    C = K.shape[0]
    A = (beta[:, None] * (K @ K.T)).tril(-1)
    T = torch.linalg.solve_triangular(torch.eye(C, dtype=K.dtype) + A, torch.diag(beta), upper=False)
    U_new = T @ V - T @ K @ S
    O = Q @ S + (Q @ K.T).tril() @ U_new
    return O, S + K.T @ U_new


def titans_step(M, S, k, v, theta, eta, alpha):
    grad = 2 * torch.outer(k, M.T @ k - v)
    S_new = eta * S - theta * grad
    return (1 - alpha) * M + S_new, S_new


def route_and_balance(logits, top_k):
    N, n = logits.shape
    probs = logits.softmax(-1)
    top = probs.topk(top_k, dim=-1).indices
    routed = torch.zeros_like(probs).scatter(-1, top, 1.0)
    kept = probs * routed
    f = routed.sum(0) / (N * top_k)
    return kept / kept.sum(-1, keepdim=True), n * (f * probs.mean(0)).sum()


def hippo_legs_matrices(N):
    r = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
    A = -(r[:, None] * r[None, :]).tril(-1) - torch.diag(torch.arange(1, N + 1, dtype=torch.float64))
    return A, r


def mqar_example(keys, values, order, slots, seq_len, n_passes):
    n = len(keys)
    inputs = np.zeros(seq_len, dtype=np.int64)
    targets = np.full(seq_len, -100, dtype=np.int64)
    block = np.empty(2 * n, dtype=np.int64)
    block[0::2], block[1::2] = keys, values
    context = 2 * n * n_passes
    inputs[:context] = np.tile(block, n_passes)
    at = context + 2 * slots
    inputs[at], inputs[at + 1] = keys[order], values[order]
    targets[at] = values[order]
    return inputs, targets


@njit
def fused_delta_step(q, k, v, S, beta, alpha):
    Dk, Dv = S.shape
    kq = 0.0
    for d in range(Dk):
        kq += k[d] * q[d]
    o = np.empty(Dv)
    S_new = np.empty_like(S)
    for e in range(Dv):
        sk = 0.0
        sq = 0.0
        for d in range(Dk):
            sk += S[d, e] * k[d]
            sq += S[d, e] * q[d]
        u = beta * (v[e] - alpha * sk)
        o[e] = alpha * sq + u * kq
        for d in range(Dk):
            S_new[d, e] = alpha * S[d, e] + k[d] * u
    return o, S_new


@njit
def delta_rule_row(q, k, v, beta, alpha, S0, C):
    T, Dk = k.shape
    Dv = v.shape[1]
    S = S0.copy()
    out = np.zeros((T, Dv))
    G = np.zeros((C, C))
    gam = np.zeros(C)
    A = np.zeros((C, C))
    P = np.zeros((C, C))
    U = np.zeros((C, Dv))
    QS = np.zeros((C, Dv))
    for t0 in range(0, T, C):
        n = min(C, T - t0)
        for i in range(n):
            G[i, i] = 1.0
            for j in range(i - 1, -1, -1):
                G[i, j] = G[i, j + 1] * alpha[t0 + j + 1]
            gam[i] = G[i, 0] * alpha[t0]
        for i in range(n):
            for e in range(Dv):
                U[i, e] = 0.0
                QS[i, e] = 0.0
            for d in range(Dk):
                for e in range(Dv):
                    U[i, e] += k[t0 + i, d] * S[d, e]
                    QS[i, e] += q[t0 + i, d] * S[d, e]
        for i in range(n):
            for j in range(i + 1):
                kk = 0.0
                qk = 0.0
                for d in range(Dk):
                    kk += k[t0 + i, d] * k[t0 + j, d]
                    qk += q[t0 + i, d] * k[t0 + j, d]
                A[i, j] = beta[t0 + i] * G[i, j] * kk
                P[i, j] = G[i, j] * qk
        for i in range(n):
            for e in range(Dv):
                U[i, e] = beta[t0 + i] * (v[t0 + i, e] - gam[i] * U[i, e])
            for j in range(i):
                for e in range(Dv):
                    U[i, e] -= A[i, j] * U[j, e]
        for i in range(n):
            for e in range(Dv):
                acc = gam[i] * QS[i, e]
                for j in range(i + 1):
                    acc += P[i, j] * U[j, e]
                out[t0 + i, e] = acc
        gn = gam[n - 1]
        for d in range(Dk):
            for e in range(Dv):
                S[d, e] *= gn
        for j in range(n):
            w = G[n - 1, j]
            for d in range(Dk):
                for e in range(Dv):
                    S[d, e] += w * k[t0 + j, d] * U[j, e]
    return out, S


CORRECT = {
    "3.1": linear_memory,
    "3.2": delta_update,
    "3.3": gated_delta_memory,
    "3.4": delta_chunk,
    "3.5": titans_step,
    "3.6": route_and_balance,
    "3.7": hippo_legs_matrices,
    "3.8": mqar_example,
    "3.9": fused_delta_step,
    "3.10": delta_rule_row,
}
CHECKS = {label: getattr(checks, f"ex_{label.replace('.', '_')}") for label in CORRECT}

SIGNATURES = {
    "3.1": "linear_memory(q, k, v)",
    "3.2": "delta_update(S, k, v, beta)",
    "3.3": "gated_delta_memory(q, k, v, beta, alpha)",
    "3.4": "delta_chunk(S, Q, K, V, beta)",
    "3.5": "titans_step(M, S, k, v, theta, eta, alpha)",
    "3.6": "route_and_balance(logits, top_k)",
    "3.7": "hippo_legs_matrices(N)",
    "3.8": "mqar_example(keys, values, order, slots, seq_len, n_passes)",
    "3.9": "fused_delta_step(q, k, v, S, beta, alpha)",
    "3.10": "delta_rule_row(q, k, v, beta, alpha, S0, C)",
}
COMPILED = {"3.9", "3.10"}


from_body, stub = answer_factory(SIGNATURES, COMPILED, WRONG)


# -------------------------------------------------------------------------------------------- the tests


assert set(SIGNATURES) == set(CORRECT)
globals().update(contract_tests(CORRECT, CHECKS, WRONG, from_body, stub))


# -------------------------------------------------------------- the hints name the likely cause


def test_hints_of_the_wrong_answers():
    expect_hint(checks.ex_3_1, from_body("3.1"), "read before writing")
    expect_hint(checks.ex_3_2, from_body("3.2"), "stepped UP")
    expect_hint(checks.ex_3_3, from_body("3.3"), "decay FIRST")
    expect_hint(checks.ex_3_4, from_body("3.4"), "keep the diagonal")
    expect_hint(checks.ex_3_5, from_body("3.5"), "has no ½")
    expect_hint(checks.ex_3_6, from_body("3.6"), "routing choices")
    expect_hint(checks.ex_3_7, from_body("3.7"), "BELOW the diagonal")
    expect_hint(checks.ex_3_8, from_body("3.8"), "query KEY's position")
    expect_hint(checks.ex_3_9, from_body("3.9"), "reads the NEW state")
    expect_hint(checks.ex_3_10, from_body("3.10"), "carry the state across chunks")


def _outer_vk(q, k, v):  # S as v kᵀ: the transposed memory
    O, S = linear_memory(q, k, v)
    return O, S.T


def test_more_wrong_answers():
    expect_hint(checks.ex_3_1, _outer_vk, "k vᵀ")
    expect_hint(checks.ex_3_1, lambda q, k, v: (q @ (k.T @ v), k.T @ v), "causal")
    expect_hint(checks.ex_3_2, lambda S, k, v, beta: S + beta * torch.outer(k, v), "linear attention's write")
    expect_hint(checks.ex_3_2, lambda S, k, v, beta: S - 2 * beta * torch.outer(k, S.T @ k - v), "without a factor 2")
    expect_hint(checks.ex_3_2, lambda S, k, v, beta: None, "forget `return`")

    def erase_undecayed(q, k, v, beta, alpha):
        S = torch.zeros(k.shape[1], v.shape[1], dtype=v.dtype)
        outs = []
        for t in range(k.shape[0]):
            u = beta[t] * (v[t] - S.T @ k[t])
            S = alpha[t] * S + torch.outer(k[t], u)
            outs.append(S.T @ q[t])
        return torch.stack(outs), S

    expect_hint(checks.ex_3_3, erase_undecayed, "decayed memory")
    expect_hint(checks.ex_3_3, lambda q, k, v, beta, alpha: gated_delta_memory(q, k, v, beta, torch.ones_like(alpha)),
                "apply the decay")

    def no_ws(S, Q, K, V, beta):
        C = K.shape[0]
        A = (beta[:, None] * (K @ K.T)).tril(-1)
        T = torch.linalg.solve_triangular(torch.eye(C, dtype=K.dtype) + A, torch.diag(beta), upper=False)
        U = T @ V
        return Q @ S + (Q @ K.T).tril() @ U, S + K.T @ U

    expect_hint(checks.ex_3_4, no_ws, "U' = U − W S")
    expect_hint(checks.ex_3_5, lambda M, S, k, v, theta, eta, alpha: titans_step(M, S, k, v, theta, eta, 1 - alpha),
                "FORGETTING gate")
    expect_hint(checks.ex_3_5, lambda M, S, k, v, theta, eta, alpha: titans_step(M, S * 0, k, v, theta, eta, alpha),
                "past surprise")

    def unnormalised(logits, top_k):
        weights, loss = route_and_balance(logits, top_k)
        probs = logits.softmax(-1)
        return probs * (weights > 0), loss

    expect_hint(checks.ex_3_6, unnormalised, "renormalise")
    expect_hint(checks.ex_3_6, lambda logits, top_k: (route_and_balance(logits, top_k)[0],
                                                      route_and_balance(logits, top_k)[1] / logits.shape[1]),
                "number of memories")
    expect_hint(checks.ex_3_7, lambda N: (hippo_legs_matrices(N)[0] + torch.eye(N, dtype=torch.float64),
                                          hippo_legs_matrices(N)[1]), r"−\(n \+ 1\)|−\(n\+1\)")
    expect_hint(checks.ex_3_7, lambda N: (hippo_legs_matrices(N)[0], torch.ones(N, dtype=torch.float64)), "√")

    def single_pass(keys, values, order, slots, seq_len, n_passes):
        inputs, targets = mqar_example(keys, values, order, slots, seq_len, n_passes)
        n = len(keys)
        inputs[2 * n:2 * n * n_passes] = 0
        return inputs, targets

    expect_hint(checks.ex_3_8, single_pass, "n_passes times")
    expect_hint(checks.ex_3_9, fused_delta_step.py_func, "@njit")
    expect_hint(checks.ex_3_10, delta_rule_row.py_func, "@njit")


def test_the_chunk_reference_is_the_recurrence():
    from labkit.memory.deltanet import delta_rule_recurrent

    g = np.random.default_rng(0)
    S = torch.from_numpy(g.standard_normal((4, 3)))
    Q, K = (torch.nn.functional.normalize(torch.from_numpy(g.standard_normal((5, 4))), dim=-1) for _ in range(2))
    V, beta = torch.from_numpy(g.standard_normal((5, 3))), torch.from_numpy(g.uniform(0, 1, 5))
    O, S_new = checks.delta_chunk_reference(S, Q, K, V, beta)
    o_ref, S_ref = delta_rule_recurrent(Q[None, None], K[None, None], V[None, None], beta[None, None],
                                        S0=S[None, None])
    assert torch.allclose(O, o_ref[0, 0]) and torch.allclose(S_new, S_ref[0, 0])
