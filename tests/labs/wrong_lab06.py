"""One realistic wrong answer per exercise of labs/lab06_snn_cam.ipynb; each must make its check fail.

``WRONG[label]`` replaces the exercise's solution region (``labkit.assign.substitute``), indented like the
region: the body of the exercise's function (for 6.10 and 6.11 the body of an ``@njit`` function, so the wrong
answer must compile). tests/labs/test_labs.py runs all of WRONG in one notebook (the exercises do not build on
each other: 6.6 calls 6.5's function, but its wrong answer replaces that call); tests/unit/test_check_snn.py runs
the same bodies against the checks directly and checks the hint each one gets.
"""

WRONG = {
    # the textbook form of gain_syn, without the τ_s = τ_m limit: 0/0 when the time constants are equal.
    "6.1": """
for name, value in (("tau_m", tau_m), ("tau_s", tau_s), ("R", R), ("dt", dt)):
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
decay_v = math.exp(-dt / tau_m)
gain_syn = R * tau_s / (tau_s - tau_m) * (math.exp(-dt / tau_s) - math.exp(-dt / tau_m))
gain_ext = R * (1 - decay_v)
return decay_v, gain_syn, gain_ext, math.exp(-dt / tau_s)
""",
    # Δt = t_pre − t_post: the window is mirrored, post-before-pre pairs potentiate.
    "6.2": """
dw = 0.0
for t_pre in pre_times:
    for t_post in post_times:
        delta = t_pre - t_post
        if delta >= 0:
            dw += params.A_plus * math.exp(-delta / params.tau_plus)
        else:
            dw -= params.A_minus * math.exp(delta / params.tau_minus)
return dw
""",
    # np.sign: a unit whose field is exactly 0 becomes 0 instead of +1.
    "6.3": """
N = patterns.shape[1]
W = patterns.T @ patterns / N
np.fill_diagonal(W, 0.0)
s = cue.copy()
for _ in range(max_steps):
    new = np.sign(W @ s)
    if np.array_equal(new, s):
        break
    s = new
return W, s
""",
    # softmax without subtracting the maximum: exp overflows for large β (nan).
    "6.4": """
p = np.exp(beta * xi @ X.T)
p = p / p.sum(axis=1, keepdims=True)
return p @ X
""",
    # counts overlap > θ ("more than θ shared bits"): the sum starts one term too late.
    "6.5": """
lo = max(theta + 1, w - (n - s))
b = np.arange(lo, min(w, s) + 1)
if b.size == 0:
    return -math.inf

def log_comb(a, k):
    return gammaln(a + 1) - gammaln(k + 1) - gammaln(a - k + 1)

return float(logsumexp(log_comb(s, b) + log_comb(n - s, w - b)) - log_comb(n, w))
""",
    # the union's bits simply add up: shared bits are counted twice.
    "6.6": """
expected_on = min(n, M * w)
return expected_on, math.exp(log_false_match(n, w, theta, round(expected_on)))
""",
    # Q of numpy's QR without the sign fix: orthogonal, but not Haar-random (Q[0, 0] is always <= 0).
    "6.7": """
A = rng.standard_normal((d, d))
if kind == "gaussian":
    return A / math.sqrt(d)
if kind == "orthogonal":
    return np.linalg.qr(A)[0]
raise ValueError(f"kind must be 'gaussian' or 'orthogonal', got {kind!r}")
""",
    # learning ORs into the cue's row: relearning a cue never forgets its old content.
    "6.8": """
W = np.zeros((n_cues, n_bits), dtype=bool)
out = []
for op in ops:
    if op[0] not in ("learn", "cue", "content"):
        raise ValueError(f"unknown operation {op[0]!r}")
    if op[0] in ("learn", "cue") and not 0 <= op[1] < n_cues:
        raise ValueError(f"cue must be in 0..{n_cues - 1}, got {op[1]}")
    bits = op[2] if op[0] == "learn" else op[1] if op[0] == "content" else None
    if bits is not None and np.shape(bits) != (n_bits,):
        raise ValueError(f"patterns must have {n_bits} bits, got shape {np.shape(bits)}")
    if op[0] == "learn":
        W[op[1]] |= np.asarray(bits, dtype=bool)
    elif op[0] == "cue":
        out.append(W[op[1]].copy())
    else:
        out.append([int(c) for c in np.flatnonzero((W & np.asarray(bits, dtype=bool)).any(axis=1))])
return out
""",
    # plain Hebbian learning, ΔH ∝ y xᵀ, without Oja's decay term: H grows without bound.
    "6.9": """
H = H0.copy()
B = X.shape[0]
for _ in range(epochs):
    Y = X @ H.T
    H = H + eta / B * (Y.T @ X)
return H, dW - dW @ H.T @ H
""",
    # a refractory neuron is skipped entirely: its synaptic current freezes instead of integrating.
    "6.10": """
v_rest, decay_v, gain_syn, gain_ext, decay_syn, v_reset, v_th = k[0], k[1], k[2], k[3], k[4], k[5], k[6]
N = v.shape[0]
spiked = np.zeros(N, dtype=np.bool_)
for i in range(N):
    if refrac[i] > 0:
        v[i] = v_reset
        refrac[i] -= 1
        continue
    I1 = I[i] + I_in[i]
    vi = v_rest + (v[i] - v_rest) * decay_v + I1 * gain_syn + i_ext[i] * gain_ext
    if vi >= v_th:
        v[i] = v_reset
        refrac[i] = n_ref
        spiked[i] = True
    else:
        v[i] = vi
    I[i] = I1 * decay_syn
return spiked
""",
    # a segment fires only ABOVE the threshold: overlap > θ instead of ≥ θ.
    "6.11": """
B, W = Q.shape
M = S.shape[0]
overlap = np.zeros((B, M), dtype=np.int64)
match = np.zeros((B, M), dtype=np.bool_)
for b in range(B):
    for m in range(M):
        c = 0
        for j in range(W):
            x = Q[b, j] & S[m, j]
            for i in range(64):
                c += (x >> i) & 1
        overlap[b, m] = c
        match[b, m] = c > theta
return match, overlap
""",
}
