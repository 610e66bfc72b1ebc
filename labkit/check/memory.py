"""Checks of Lab 3 (labs/lab03_neural_memory.ipynb): neural memory, written token by token and chunk by chunk.

Each ``ex_3_k`` property-tests a student's answer against labkit's reference on random inputs (the
chapter's code in :mod:`labkit.memory`, the kernels' ``reference`` in :mod:`labkit.kernels`, the recall
task in :mod:`labkit.data.recall`), prints one line on success and raises ``AssertionError`` with a hint on
failure. Every check is deterministic (fixed seeds, derandomised hypothesis). The exercises work on one head
without batch dimensions: ``q, k (T, Dk)``, ``v (T, Dv)``, a state ``S (Dk, Dv)``; the checks add the
``(B, H)`` = ``(1, 1)`` dimensions labkit's functions expect. Where the check recognises a common slip, the
hint names it (each slip is computed here, small and exact, as a *variant* of the reference).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from hypothesis import strategies as st

from labkit.check import allclose_answer as _close
from labkit.check import answer_array as _array
from labkit.check import answer_number as _number
from labkit.check import call_answer as _call
from labkit.check import exercise, expect, expect_close, for_all
from labkit.check import is_njit as _is_njit

_SEEDS = st.integers(0, 2**16)
_DIMS = st.integers(1, 8)


# --------------------------------------------------------------------------------------------- helpers


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _normal(rng: np.random.Generator, *shape: int, size: float = 1.0) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape) * size)


def _unit(rng: np.random.Generator, n: int, d: int) -> torch.Tensor:
    """n random unit rows in R^d (float64): the L2-normalised keys every delta-rule memory expects."""
    x = rng.standard_normal((n, d))
    return torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))


def _bh(*xs: torch.Tensor) -> list[torch.Tensor]:
    """Add the (B, H) = (1, 1) leading dimensions labkit's functional ops expect."""
    return [x[None, None] for x in xs]


def _pair(what: str, result, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """A student's ``(a, b)`` result as two float64 arrays, or a clear failure."""
    expect(isinstance(result, (tuple, list)) and len(result) == 2,
           f"{what} should return the tuple ({names[0]}, {names[1]}), got {type(result).__name__}.")
    return _array(f"{names[0]} of {what}", result[0]), _array(f"{names[1]} of {what}", result[1])


def _first_bad_row(got: np.ndarray, expected: np.ndarray, atol: float = 1e-8, rtol: float = 1e-6) -> int:
    bad = ~np.isclose(got, expected, atol=atol, rtol=rtol).all(axis=tuple(range(1, got.ndim)))
    return int(np.argmax(bad)) if bad.any() else -1


# ------------------------------------------------------------------- 3.1 the outer-product memory


@exercise("3.1", "linear_memory writes S_t = S_{t−1} + k_t v_tᵀ and reads o_t = S_tᵀ q_t, "
                 "equal to labkit's linear_attention_recurrent")
def ex_3_1(linear_memory: Callable) -> None:
    from labkit.memory.linear import linear_attention_recurrent

    def test(example):
        T, Dk, Dv, seed = example
        rng = _rng(seed)
        q, k, v = _normal(rng, T, Dk), _normal(rng, T, Dk), _normal(rng, T, Dv)
        what = f"linear_memory(q ({T}, {Dk}), k ({T}, {Dk}), v ({T}, {Dv}))"
        O, S = _pair(what, _call(what, linear_memory, q.clone(), k.clone(), v.clone()), ("O", "S"))
        o_ref, S_ref = (x[0, 0].numpy() for x in linear_attention_recurrent(*_bh(q, k, v)))
        if not _close(S, S_ref):
            if _close(S, S_ref.T):
                hint = "S is (Dk, Dv): write the outer product k vᵀ (torch.outer(k_t, v_t)), not v kᵀ."
            else:
                hint = "after all T tokens S = Σ_t k_t v_tᵀ = Kᵀ V."
            expect_close(f"S of {what}", S, S_ref, atol=1e-8, hint=hint)
        expect(O.shape == (T, Dv), f"O of {what} has shape {O.shape}, expected {(T, Dv)}: one read per token.")
        if _close(O, o_ref):
            return
        before = o_ref - (q * k).sum(1, keepdim=True).numpy() * v.numpy()  # o_t = S_{t-1}ᵀ q_t
        if _close(O, before):
            hint = ("you read before writing: o_t = S_tᵀ q_t reads the memory AFTER token t's write "
                    "(it includes (q_t·k_t) v_t).")
        elif T > 1 and _close(O, q.numpy() @ S_ref):
            hint = "each o_t reads the memory as it was after token t, not the final memory: the read is causal."
        else:
            hint = "for t = 1..T: S ← S + k_t v_tᵀ, then o_t = Sᵀ q_t."
        expect_close(f"O of {what}", O, o_ref, atol=1e-8, hint=hint)

    for_all(st.tuples(st.integers(1, 20), _DIMS, _DIMS, _SEEDS), test, max_examples=25)


# ------------------------------------------------------------------- 3.2 the delta rule as SGD


def _delta_variants(S, k, v, beta) -> dict[str, torch.Tensor]:
    """One SGD step on ½‖Sᵀk − v‖² and the slips the check recognises."""
    grad = torch.outer(k, S.T @ k - v)
    variants = {
        "ascent": S + beta * grad,
        "no erase": S + beta * torch.outer(k, v),
        "factor 2": S - 2 * beta * grad,
    }
    if S.shape[0] == S.shape[1]:  # S k instead of Sᵀ k only runs when S is square
        variants["S k"] = S - beta * torch.outer(k, S @ k - v)
    return variants


@exercise("3.2", "delta_update takes one SGD step on ½‖Sᵀk − v‖² in closed form, equal to autograd and to "
                 "one token of labkit's delta_rule_recurrent")
def ex_3_2(delta_update: Callable) -> None:
    from labkit.memory.deltanet import delta_rule_recurrent

    def test(example):
        Dk, Dv, seed, beta, size = example
        rng = _rng(seed)
        S, k, v = _normal(rng, Dk, Dv, size=size), _unit(rng, 1, Dk)[0], _normal(rng, Dv)
        # the reference by autograd: S − β ∇_S ½‖Sᵀk − v‖²
        S_var = S.clone().requires_grad_(True)
        (0.5 * ((S_var.T @ k - v) ** 2).sum()).backward()
        expected = (S - beta * S_var.grad).numpy()
        _, S_rec = delta_rule_recurrent(*_bh(k[None], k[None], v[None]), torch.full((1, 1, 1), beta,
                                        dtype=S.dtype), S0=S[None, None])
        assert np.allclose(S_rec[0, 0].numpy(), expected, atol=1e-10), "labkit's delta rule is not the SGD step"
        what = f"delta_update(S ({Dk}, {Dv}), k ({Dk},), v ({Dv},), beta={beta:.3g})"
        got = _array(what, _call(what, delta_update, S.clone(), k.clone(), v.clone(), beta))
        expect(got.shape == (Dk, Dv), f"{what} has shape {got.shape}, expected {(Dk, Dv)}: return the new S.")
        if _close(got, expected):
            return
        hints = {
            "ascent": "you stepped UP the gradient: S_new = S − β ∇L, ∇L = k (Sᵀk − v)ᵀ.",
            "no erase": ("that is linear attention's write S + β k vᵀ: the delta rule first subtracts what S "
                         "recalls for k, S_new = S − β k (Sᵀk − v)ᵀ."),
            "factor 2": "the loss is ½‖Sᵀk − v‖²: its gradient is k (Sᵀk − v)ᵀ, without a factor 2.",
            "S k": "S (Dk, Dv) recalls Sᵀk for a key k (not S k): ∇L = k (Sᵀk − v)ᵀ.",
        }
        for name, variant in _delta_variants(S, k, v, beta).items():
            if beta > 0 and _close(got, variant.numpy()):
                expect_close(what, got, expected, atol=1e-8, hint=hints[name])
        expect_close(what, got, expected, atol=1e-8,
                     hint="∇_S ½‖Sᵀk − v‖² = k (Sᵀk − v)ᵀ; S_new = S − β k (Sᵀk − v)ᵀ.")

    for_all(st.tuples(_DIMS, _DIMS, _SEEDS, st.floats(0.05, 1.0), st.sampled_from([0.0, 1.0, 3.0])), test,
            max_examples=25)

    # what the step means: with β = 1 and a unit key, the memory recalls v for k exactly
    rng = _rng(7)
    S, k, v = _normal(rng, 6, 4), _unit(rng, 1, 6)[0], _normal(rng, 4)
    got = _array("delta_update(S, k, v, 1.0)", _call("delta_update(S, k, v, 1.0)", delta_update, S, k, v, 1.0))
    expect(np.allclose(got.T @ k.numpy(), v.numpy(), atol=1e-8),
           "with β = 1 and a unit key, S_newᵀ k should equal v exactly (one step solves the regression).")


# ------------------------------------------------------------------- 3.3 the gated delta rule


def _gated_variant(q, k, v, beta, alpha, order: str) -> tuple[np.ndarray, np.ndarray]:
    """Token loops of the gated delta rule with the decay in the wrong place (the slips 3.3 names)."""
    S = torch.zeros(k.shape[1], v.shape[1], dtype=q.dtype)
    outs = []
    for t in range(q.shape[0]):
        if order == "decay after write":
            S = alpha[t] * (S + torch.outer(k[t], beta[t] * (v[t] - S.T @ k[t])))
        else:  # "erase reads the undecayed memory"
            u = beta[t] * (v[t] - S.T @ k[t])
            S = alpha[t] * S + torch.outer(k[t], u)
        outs.append(S.T @ q[t])
    return torch.stack(outs).numpy(), S.numpy()


@exercise("3.3", "gated_delta_memory decays, erases, writes and reads token by token, equal to labkit's "
                 "delta_rule_recurrent with alpha")
def ex_3_3(gated_delta_memory: Callable) -> None:
    from labkit.memory.deltanet import delta_rule_recurrent

    def test(example):
        T, Dk, Dv, seed = example
        rng = _rng(seed)
        q, k, v = _unit(rng, T, Dk), _unit(rng, T, Dk), _normal(rng, T, Dv)
        beta = torch.from_numpy(rng.uniform(0.1, 1.0, T))
        alpha = torch.from_numpy(rng.uniform(0.3, 1.0, T))
        what = f"gated_delta_memory(q, k ({T}, {Dk}), v ({T}, {Dv}), beta ({T},), alpha ({T},))"
        result = _call(what, gated_delta_memory, q.clone(), k.clone(), v.clone(), beta.clone(), alpha.clone())
        O, S = _pair(what, result, ("O", "S"))
        o_ref, S_ref = (x[0, 0].numpy() for x in delta_rule_recurrent(*_bh(q, k, v, beta), alpha=alpha[None, None]))
        expect(O.shape == (T, Dv), f"O of {what} has shape {O.shape}, expected {(T, Dv)}.")
        expect(S.shape == (Dk, Dv), f"S of {what} has shape {S.shape}, expected {(Dk, Dv)}.")
        if _close(O, o_ref) and _close(S, S_ref):
            return
        o_after, S_after = _gated_variant(q, k, v, beta, alpha, "decay after write")
        o_raw, S_raw = _gated_variant(q, k, v, beta, alpha, "erase reads the undecayed memory")
        o_lin = delta_rule_recurrent(*_bh(q, k, v, beta))[0][0, 0].numpy()
        if _close(O, o_after) and _close(S, S_after):
            hint = ("decay FIRST: S' = α_t S_{t−1}, then erase and write from S' "
                    "(u_t = β_t (v_t − S'ᵀk_t), S_t = S' + k_t u_tᵀ); you decayed after the write.")
        elif _close(O, o_raw) and _close(S, S_raw):
            hint = "the erase must read the decayed memory: u_t = β_t (v_t − α_t S_{t−1}ᵀ k_t)."
        elif _close(O, o_lin):
            hint = "apply the decay α_t to the memory at every token."
        else:
            hint = "S' = α_t S_{t−1}; u_t = β_t (v_t − S'ᵀ k_t); S_t = S' + k_t u_tᵀ; o_t = S_tᵀ q_t."
        t = _first_bad_row(O, o_ref)
        where = f" (first wrong output at token {t})" if t >= 0 else ""
        expect_close(f"O of {what}{where}", O, o_ref, atol=1e-8, hint=hint)
        expect_close(f"S of {what}", S, S_ref, atol=1e-8, hint=hint)

    for_all(st.tuples(st.integers(1, 20), _DIMS, _DIMS, _SEEDS), test, max_examples=25)


# ------------------------------------------------------------------- 3.4 one chunk in WY / UT form


def delta_chunk_reference(S: torch.Tensor, Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, beta: torch.Tensor,
                          diagonal: bool = True, subtract_WS: bool = True, strict_A: bool = True):
    """One chunk of the (ungated) delta rule in WY / UT form; the keyword switches build the slips 3.4 names.

    S (Dk, Dv), Q, K (C, Dk), V (C, Dv), beta (C,) -> (O (C, Dv), S_new (Dk, Dv)).
    """
    C = K.shape[0]
    A = (beta[:, None] * (K @ K.T)).tril(-1 if strict_A else 0)
    T = torch.linalg.solve(torch.eye(C, dtype=K.dtype) + A, torch.diag(beta))
    W, U = T @ K, T @ V
    U_new = U - W @ S if subtract_WS else U
    O = Q @ S + (Q @ K.T).tril(0 if diagonal else -1) @ U_new
    return O, S + K.T @ U_new


@exercise("3.4", "delta_chunk computes one chunk in WY / UT form, equal to labkit's delta_rule_recurrent "
                 "token by token from the same state")
def ex_3_4(delta_chunk: Callable) -> None:
    from labkit.memory.deltanet import delta_rule_recurrent

    def test(example):
        C, Dk, Dv, seed, size = example
        rng = _rng(seed)
        S = _normal(rng, Dk, Dv, size=size)
        Q, K, V = _unit(rng, C, Dk), _unit(rng, C, Dk), _normal(rng, C, Dv)
        beta = torch.from_numpy(rng.uniform(0.1, 1.0, C))
        what = f"delta_chunk(S ({Dk}, {Dv}), Q, K ({C}, {Dk}), V ({C}, {Dv}), beta ({C},))"
        result = _call(what, delta_chunk, S.clone(), Q.clone(), K.clone(), V.clone(), beta.clone())
        O, S_new = _pair(what, result, ("O", "S_new"))
        o_ref, S_ref = (x[0, 0].numpy() for x in delta_rule_recurrent(*_bh(Q, K, V, beta), S0=S[None, None]))
        expect(O.shape == (C, Dv), f"O of {what} has shape {O.shape}, expected {(C, Dv)}.")
        expect(S_new.shape == (Dk, Dv), f"S_new of {what} has shape {S_new.shape}, expected {(Dk, Dv)}.")
        if _close(O, o_ref) and _close(S_new, S_ref):
            return
        slips = {
            "diagonal": ("o_i reads S_i, the memory AFTER token i's write: keep the diagonal of the causal mask "
                         "(tril(Q Kᵀ), not tril(Q Kᵀ, −1))."),
            "subtract_WS": ("the new values correct what the memory the chunk STARTS from recalls: "
                            "U' = U − W S (you used U)."),
            "strict_A": "A = tril(diag(β) K Kᵀ, −1) is STRICTLY lower triangular (its diagonal is zero).",
        }
        hint = "A = tril(diag(β) K Kᵀ, −1); T = (I + A)⁻¹ diag(β); U' = T V − T K S; O = Q S + tril(Q Kᵀ) U'."
        for switch, text in slips.items():
            o_var, S_var = delta_chunk_reference(S, Q, K, V, beta, **{switch: False})
            if _close(O, o_var.numpy()) and _close(S_new, S_var.numpy()):
                hint = text
                break
        t = _first_bad_row(O, o_ref)
        where = f" (first wrong row {t})" if t >= 0 else ""
        expect_close(f"O of {what}{where}", O, o_ref, atol=1e-8, hint=hint)
        expect_close(f"S_new of {what}", S_new, S_ref, atol=1e-8, hint=hint)

    for_all(st.tuples(st.integers(1, 16), _DIMS, _DIMS, _SEEDS, st.sampled_from([0.0, 1.0])), test,
            max_examples=25)


# ------------------------------------------------------------------- 3.5 Titans: surprise, momentum, forgetting


def _titans_variants(M, S, k, v, theta, eta, alpha) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(M_new, S_new) of one Titans step, and of the slips 3.5 names."""
    grad = 2 * torch.outer(k, M.T @ k - v)
    S_new = eta * S - theta * grad
    return {
        "right": ((1 - alpha) * M + S_new, S_new),
        "half gradient": ((1 - alpha) * M + eta * S - theta * grad / 2, eta * S - theta * grad / 2),
        "ascent": ((1 - alpha) * M + eta * S + theta * grad, eta * S + theta * grad),
        "no momentum": ((1 - alpha) * M - theta * grad, -theta * grad),
        "alpha keeps": (alpha * M + S_new, S_new),
        "forget the step": ((1 - alpha) * (M + S_new), S_new),
    }


_TITANS_HINTS = {
    "half gradient": "ℓ = ‖Mᵀk − v‖² has no ½: its gradient is 2 k (Mᵀk − v)ᵀ.",
    "ascent": "the surprise moves DOWN the gradient: S_t = η S_{t−1} − θ ∇ℓ.",
    "no momentum": "keep the past surprise: S_t = η S_{t−1} − θ ∇ℓ (you dropped η S_{t−1}).",
    "alpha keeps": "α is the FORGETTING gate: the memory keeps (1 − α) M_{t−1}, not α M_{t−1}.",
    "forget the step": "forgetting scales the old memory only: M_t = (1 − α) M_{t−1} + S_t.",
}


@exercise("3.5", "titans_step moves the surprise with momentum and forgets, equal to labkit's titans_recurrent "
                 "(linear memory, token by token)")
def ex_3_5(titans_step: Callable) -> None:
    from labkit.memory.titans import titans_recurrent

    def test(example):
        T, Dk, Dv, seed = example
        rng = _rng(seed)
        M0, S0 = _normal(rng, Dk, Dv, size=0.5), _normal(rng, Dk, Dv, size=0.2)
        q, k, v = _unit(rng, T, Dk), _unit(rng, T, Dk), _normal(rng, T, Dv)
        theta, eta, alpha = (torch.from_numpy(rng.uniform(lo, hi, T)) for lo, hi in ((0.05, 0.5), (0.0, 0.95),
                                                                                    (0.0, 0.3)))
        o_ref, memory, momentum = titans_recurrent(*_bh(q, k, v, theta, eta, alpha), {"W": M0[None, None]},
                                                   {"W": S0[None, None]}, kind="linear", chunk_size=1)
        o_ref, M_ref, S_ref = o_ref[0, 0].numpy(), memory["W"][0, 0].numpy(), momentum["W"][0, 0].numpy()
        M, S = M0.clone(), S0.clone()
        outs = []
        for t in range(T):
            th, et, al = float(theta[t]), float(eta[t]), float(alpha[t])
            what = (f"titans_step(M ({Dk}, {Dv}), S ({Dk}, {Dv}), k ({Dk},), v ({Dv},), theta={th:.3g}, "
                    f"eta={et:.3g}, alpha={al:.3g})")
            M_new, S_new = _pair(what, _call(what, titans_step, M.clone(), S.clone(), k[t].clone(), v[t].clone(),
                                             th, et, al), ("M_new", "S_new"))
            expect(M_new.shape == (Dk, Dv) and S_new.shape == (Dk, Dv),
                   f"{what} returned shapes {M_new.shape} and {S_new.shape}, expected {(Dk, Dv)} for both.")
            variants = _titans_variants(M, S, k[t], v[t], th, et, al)
            right_M, right_S = (x.numpy() for x in variants.pop("right"))
            if not (_close(M_new, right_M) and _close(S_new, right_S)):
                hint = "∇ℓ = 2 k (Mᵀk − v)ᵀ; S_t = η S_{t−1} − θ ∇ℓ; M_t = (1 − α) M_{t−1} + S_t."
                for name, (M_var, S_var) in variants.items():
                    if _close(M_new, M_var.numpy()) and _close(S_new, S_var.numpy()):
                        hint = _TITANS_HINTS[name]
                        break
                expect_close(f"S_new of {what} (token {t})", S_new, right_S, atol=1e-8, hint=hint)
                expect_close(f"M_new of {what} (token {t})", M_new, right_M, atol=1e-8, hint=hint)
            M, S = torch.from_numpy(M_new), torch.from_numpy(S_new)
            outs.append(M.T @ q[t])
        expect_close("M after all tokens", M.numpy(), M_ref, atol=1e-8)
        expect_close("S after all tokens", S.numpy(), S_ref, atol=1e-8)
        expect_close("the reads M_tᵀ q_t", torch.stack(outs).numpy(), o_ref, atol=1e-8)

    for_all(st.tuples(st.integers(1, 8), _DIMS, _DIMS, _SEEDS), test, max_examples=20)


# ------------------------------------------------------------------- 3.6 MoM: routing and load balance


@exercise("3.6", "route_and_balance picks the top-k memories, renormalises their weights and computes the "
                 "Switch load-balancing loss, equal to labkit's route and load_balancing_loss")
def ex_3_6(route_and_balance: Callable) -> None:
    from labkit.memory.mom import load_balancing_loss, route

    def test(example):
        N, n, k_frac, seed, size = example
        top_k = 1 + round(k_frac * (n - 1))
        logits = _normal(_rng(seed), N, n, size=size)
        what = f"route_and_balance(logits ({N}, {n}), top_k={top_k})"
        result = _call(what, route_and_balance, logits.clone(), top_k)
        expect(isinstance(result, (tuple, list)) and len(result) == 2,
               f"{what} should return the tuple (weights, loss).")
        weights = _array(f"weights of {what}", result[0])
        loss = _number(f"loss of {what}", result[1])
        w_ref, routed, probs = route(logits, top_k)
        loss_ref = float(load_balancing_loss(probs, routed))
        w_ref, routed, probs = w_ref.numpy(), routed.numpy(), probs.numpy()
        expect(weights.shape == (N, n), f"weights of {what} have shape {weights.shape}, expected {(N, n)}.")
        if not _close(weights, w_ref):
            if _close(weights, probs * routed):
                hint = "renormalise: divide the kept probabilities by their sum over the top-k memories."
            elif _close(weights, probs):
                hint = "keep only the top-k memories: every other weight is 0."
            elif (weights > 0).sum(1).max() > top_k:
                hint = f"at most top_k = {top_k} non-zero weights per token."
            else:
                hint = "p = softmax(logits); keep the top_k largest; w = p / Σ_{top-k} p on them, 0 elsewhere."
            expect_close(f"weights of {what}", weights, w_ref, atol=1e-8, hint=hint)
        if abs(loss - loss_ref) <= 1e-8 + 1e-6 * abs(loss_ref):
            return
        counts = routed.sum(0)
        P = probs.mean(0)
        if np.isclose(loss, n * (counts / N * P).sum()):
            hint = (f"f_m is the fraction of all N·top_k = {N * top_k} routing choices that went to m "
                    "(f sums to 1), not of the N tokens.")
        elif np.isclose(loss, loss_ref / n):
            hint = f"multiply by the number of memories n = {n}: uniform routing must give a loss of 1."
        elif np.isclose(loss, n * ((weights.sum(0) / N) * P).sum()):
            hint = "f counts routing CHOICES (the top-k mask), not the renormalised weights."
        else:
            hint = "loss = n · Σ_m f_m P_m, f_m = choices of m / all choices, P_m = mean over tokens of p_m."
        expect(False, f"loss of {what} is {loss:.6g}, expected {loss_ref:.6g}: {hint}")

    for_all(st.tuples(st.integers(1, 32), st.integers(1, 8), st.floats(0, 1), _SEEDS, st.sampled_from([0.3, 3.0])),
            test, max_examples=30)


# ------------------------------------------------------------------- 3.7 HiPPO-LegS


@exercise("3.7", "hippo_legs_matrices(N) returns the HiPPO-LegS A and B, equal to labkit's hippo_legs")
def ex_3_7(hippo_legs_matrices: Callable) -> None:
    from labkit.memory.lssl import hippo_legs

    def test(N):
        what = f"hippo_legs_matrices({N})"
        A, B = _pair(what, _call(what, hippo_legs_matrices, N), ("A", "B"))
        A_ref, B_ref = (x.numpy() for x in hippo_legs(N))
        expect(A.shape == (N, N), f"A of {what} has shape {A.shape}, expected {(N, N)}.")
        expect(B.shape == (N,), f"B of {what} has shape {B.shape}, expected ({N},): a vector.")
        if not _close(A, A_ref, atol=1e-6):
            n = np.arange(N)
            if N > 1 and _close(A, A_ref.T, atol=1e-6):
                hint = "A[n, k] is non-zero BELOW the diagonal (n > k) and zero above: A is lower triangular."
            elif N > 1 and _close(np.diag(A), -n, atol=1e-6):
                hint = "the diagonal is −(n + 1) for n = 0..N−1 (0-based): −1, −2, …, −N."
            elif _close(A, -A_ref, atol=1e-6):
                hint = "A has a minus sign: the ODE x' = A x + B u must be stable (eigenvalues −1, …, −N)."
            else:
                hint = "A[n, k] = −√(2n+1)·√(2k+1) if n > k, −(n+1) if n = k, 0 if n < k (0-based n, k)."
            expect_close(f"A of {what}", A, A_ref, atol=1e-6, hint=hint)
        expect_close(f"B of {what}", B, B_ref, atol=1e-6, hint="B[n] = √(2n+1), n = 0..N−1.")

    for_all(st.integers(1, 64), test, max_examples=20)


# ------------------------------------------------------------------- 3.8 a JRT-prompted MQAR example


def mqar_example_reference(keys, values, order, slots, seq_len: int, n_passes: int) -> tuple[np.ndarray, np.ndarray]:
    """The layout of ``labkit.data.recall.mqar`` for one example, from its parts (all int arrays of length n).

    The block k1 v1 … kn vn written ``n_passes`` times, then query i (pair ``order[i]``) at the two positions
    ``2·n·n_passes + 2·slots[i]`` (key) and ``+1`` (value), filler 0 elsewhere; the target of a query-key
    position is its value, −100 everywhere else.
    """
    from labkit.data.recall import FILLER, IGNORE

    n = len(keys)
    inputs = np.full(seq_len, FILLER, dtype=np.int64)
    targets = np.full(seq_len, IGNORE, dtype=np.int64)
    block = np.empty(2 * n, dtype=np.int64)
    block[0::2], block[1::2] = keys, values
    context = 2 * n * n_passes
    inputs[:context] = np.tile(block, n_passes)
    at = context + 2 * np.asarray(slots, dtype=np.int64)
    inputs[at], inputs[at + 1] = np.asarray(keys)[order], np.asarray(values)[order]
    targets[at] = np.asarray(values)[order]
    return inputs, targets


def _mqar_parts(inputs: np.ndarray, targets: np.ndarray, n: int, n_passes: int):
    """Invert ``mqar``: (keys, values, order, slots) of one example."""
    keys, values = inputs[0:2 * n:2], inputs[1:2 * n:2]
    at = np.flatnonzero(targets != -100)
    index = {int(key): i for i, key in enumerate(keys)}
    order = np.array([index[int(inputs[a])] for a in at], dtype=np.int64)
    return keys, values, order, (at - 2 * n * n_passes) // 2


@exercise("3.8", "mqar_example lays out the (JRT-repeated) pairs, queries and targets exactly as labkit's mqar")
def ex_3_8(mqar_example: Callable) -> None:
    from labkit.data.recall import mqar

    def compare(what, got, expected, context):
        inputs, targets = _pair(what, got, ("inputs", "targets"))
        inputs_ref, targets_ref = expected
        seq_len = inputs_ref.size
        expect(inputs.shape == (seq_len,) and targets.shape == (seq_len,),
               f"{what} returned shapes {inputs.shape} and {targets.shape}, expected ({seq_len},) for both.")
        if (inputs == inputs_ref).all() and (targets == targets_ref).all():
            return
        if not (inputs == inputs_ref).all():
            bad = int(np.argmax(inputs != inputs_ref))
            if bad < context:
                hint = "the pairs k1 v1 … kn vn come first, written n_passes times in a row (JRT: read twice)."
            else:
                hint = ("query i asks pair order[i]: its key at 2·n·n_passes + 2·slots[i], its value right after; "
                        "token 0 everywhere else.")
            expect(False, f"inputs of {what} differ from mqar's first at position {bad}: got {int(inputs[bad])}, "
                          f"expected {int(inputs_ref[bad])}. {hint}")
        if (targets == np.roll(targets_ref, 1)).all():
            hint = ("the target sits at the query KEY's position: logits[t] after reading the key predict the "
                    "value (no shift).")
        else:
            hint = "targets are −100 except at each query key, where the target is that key's value."
        bad = int(np.argmax(targets != targets_ref))
        expect(False, f"targets of {what} differ at position {bad}: got {int(targets[bad])}, "
                      f"expected {int(targets_ref[bad])}. {hint}")

    def test(example):
        n, n_passes, extra, seed, a = example
        seq_len = 2 * n * n_passes + 2 * n + extra
        vocab = 2 * n + 2 + 2 * (seed % 7)
        inputs, targets = mqar(1, seq_len, n, vocab, seed=seed, power_a=a, n_passes=n_passes)
        inputs, targets = inputs[0].numpy(), targets[0].numpy()
        keys, values, order, slots = _mqar_parts(inputs, targets, n, n_passes)
        assert (np.array(mqar_example_reference(keys, values, order, slots, seq_len, n_passes)) ==
                np.stack([inputs, targets])).all(), "the reference disagrees with labkit.data.recall.mqar"
        what = (f"mqar_example(keys {keys.tolist()}, values {values.tolist()}, order {order.tolist()}, "
                f"slots {slots.tolist()}, seq_len={seq_len}, n_passes={n_passes})")
        got = _call(what, mqar_example, keys.copy(), values.copy(), order.copy(), slots.copy(), seq_len, n_passes)
        compare(what, got, (inputs, targets), 2 * n * n_passes)

    for_all(st.tuples(st.integers(1, 6), st.integers(1, 3), st.integers(0, 9), _SEEDS,
                      st.sampled_from([0.01, 1.0])), test, max_examples=30)


# ------------------------------------------------------------------- 3.9 kernel: the fused decode step


@exercise("3.9", "fused_delta_step (Numba) reads S once for Sᵀk and Sᵀq and writes S' once, equal to the "
                 "delta_step kernel reference")
def ex_3_9(fused_delta_step: Callable) -> None:
    from labkit.kernels.delta_step import reference
    from labkit.memory.deltanet import delta_rule_recurrent

    expect(_is_njit(fused_delta_step), "compile fused_delta_step with @njit (from numba import njit).")

    def test(example):
        Dk, Dv, seed, beta, alpha, size = example
        rng = _rng(seed)
        q, k = (_unit(rng, 1, Dk)[0] for _ in range(2))
        v, S = _normal(rng, Dv), _normal(rng, Dk, Dv, size=size)
        S_np = np.ascontiguousarray(S.numpy().copy())
        what = f"fused_delta_step(q, k ({Dk},), v ({Dv},), S ({Dk}, {Dv}), beta={beta:.3g}, alpha={alpha:.3g})"
        result = _call(what, fused_delta_step, q.numpy().copy(), k.numpy().copy(), v.numpy().copy(), S_np,
                       float(beta), float(alpha))
        o, S_new = _pair(what, result, ("o", "S_new"))
        expect(np.array_equal(S_np, S.numpy()), f"{what} overwrote its input S: write the new state into a new "
                                                "array (np.empty_like(S)).")
        as_bh = [x[None, None] for x in (q, k, v, S)]
        gates = [torch.full((1, 1), g, dtype=torch.float64) for g in (beta, alpha)]
        o_ref = reference(*as_bh, *gates)[0][0, 0].numpy()  # float64 in, float64 out
        _, S_ref = delta_rule_recurrent(*_bh(q[None], k[None], v[None]), gates[0][..., None], S0=S[None, None],
                                        alpha=gates[1][..., None])
        S_ref = S_ref[0, 0].numpy()
        expect(o.shape == (Dv,), f"o of {what} has shape {o.shape}, expected ({Dv},).")
        expect(S_new.shape == (Dk, Dv), f"S_new of {what} has shape {S_new.shape}, expected {(Dk, Dv)}.")
        if not _close(S_new, S_ref):
            u_raw = beta * (v.numpy() - S.numpy().T @ k.numpy())
            if alpha < 1 and _close(S_new, alpha * S.numpy() + np.outer(k.numpy(), u_raw)):
                hint = "the erase reads the decayed state: u = β (v − α Sᵀk)."
            else:
                hint = "S' = α S + k uᵀ with u = β (v − α Sᵀk)."
            expect_close(f"S_new of {what}", S_new, S_ref, atol=1e-8, hint=hint)
        if not _close(o, o_ref):
            if _close(o, alpha * (S.numpy().T @ q.numpy())):
                hint = ("o reads the NEW state: S'ᵀq = α Sᵀq + u (kᵀq), so no second pass over S is needed "
                        "(you read the old one).")
            else:
                hint = "o = S'ᵀ q = α Sᵀq + u (kᵀq), with Sᵀq accumulated in the same pass as Sᵀk."
            expect_close(f"o of {what}", o, o_ref, atol=1e-8, hint=hint)

    for_all(st.tuples(st.integers(1, 40), st.integers(1, 70), _SEEDS, st.floats(0.0, 1.0), st.floats(0.2, 1.0),
                      st.sampled_from([0.0, 1.0, 10.0])), test, max_examples=25)


# ------------------------------------------------------------------- 3.10 kernel: the chunkwise delta rule


@exercise("3.10", "delta_rule_row (Numba) runs the chunkwise gated delta rule with the state resident, equal to "
                  "the delta_rule kernel reference for any T and chunk size")
def ex_3_10(delta_rule_row: Callable) -> None:
    from labkit.kernels.delta_rule import reference

    expect(_is_njit(delta_rule_row), "compile delta_rule_row with @njit (from numba import njit).")

    def test(example):
        T, C, Dk, Dv, seed, gated, start = example
        rng = _rng(seed)
        q, k, v = _unit(rng, T, Dk), _unit(rng, T, Dk), _normal(rng, T, Dv)
        beta = torch.from_numpy(rng.uniform(0.1, 1.0, T))
        alpha = torch.from_numpy(rng.uniform(0.5, 1.0, T) if gated else np.ones(T))
        S0 = _normal(rng, Dk, Dv, size=start)
        args = [np.ascontiguousarray(x.numpy().copy()) for x in (q, k, v, beta, alpha, S0)]
        what = (f"delta_rule_row(q, k ({T}, {Dk}), v ({T}, {Dv}), beta, alpha ({T},){'' if gated else ' = 1'}, "
                f"S0 ({Dk}, {Dv}), C={C})")
        out, S = _pair(what, _call(what, delta_rule_row, *args, C), ("out", "S"))
        o_ref, S_ref = reference(*_bh(q, k, v, beta, alpha), S0=S0[None, None])
        o_ref = o_ref[0, 0].numpy()
        from labkit.memory.deltanet import delta_rule_recurrent  # the final state in float64

        S_ref = delta_rule_recurrent(*_bh(q, k, v, beta), S0=S0[None, None], alpha=alpha[None, None])[1][0, 0].numpy()
        expect(out.shape == (T, Dv), f"out of {what} has shape {out.shape}, expected {(T, Dv)}.")
        expect(S.shape == (Dk, Dv), f"S of {what} has shape {S.shape}, expected {(Dk, Dv)}: the final state.")
        if _close(out, o_ref, atol=1e-7) and _close(S, S_ref, atol=1e-7):
            return
        t = _first_bad_row(out, o_ref, atol=1e-7)
        if t < 0:
            hint = ("the outputs are right but the final state is not: carry the state across chunks, "
                    "S ← γ_n S + Σ_j (γ_n/γ_j) k_j u'_jᵀ after every chunk (did you decay S by γ_n?).")
        else:
            chunk, i = divmod(t, C)
            n_last = T - (T // C) * C
            if chunk > 0 and i == 0:  # every earlier chunk is right
                hint = (f"chunk 0 is right but chunk {chunk} is not: carry the state across chunks, "
                        "S ← γ_n S + Σ_j (γ_n/γ_j) k_j u'_jᵀ (did you decay S by γ_n?).")
            elif n_last and t >= T - n_last:
                hint = (f"only the last, partial chunk (n = {n_last} < C = {C} tokens) is wrong: loop to "
                        "n = min(C, T − t0) and use γ_n, Γ[n−1, j] of that n.")
            elif not gated:
                hint = ("with α ≡ 1: A_ij = β_i k_i·k_j (j < i); U' = β (V − K S) − A U' by forward substitution; "
                        "O = Q S + tril(Q Kᵀ) U'.")
            else:
                hint = ("with decay: Γ_ij = α_{j+1}⋯α_i, γ_i = α_1⋯α_i; A_ij = β_i Γ_ij k_i·k_j (j < i); "
                        "U' = β (V − diag(γ) K S) − A U'; O = diag(γ) Q S + (Q Kᵀ ⊙ Γ) U'.")
            hint = f"first wrong output at token {t} (chunk {chunk}, position {i}). {hint}"
        expect_close(f"out of {what}", out, o_ref, atol=1e-7, hint=hint)
        expect_close(f"S of {what}", S, S_ref, atol=1e-7, hint=hint)

    for_all(st.tuples(st.integers(1, 40), st.integers(1, 16), _DIMS, _DIMS, _SEEDS, st.booleans(),
                      st.sampled_from([0.0, 1.0])), test, max_examples=30)
