"""One realistic wrong answer per exercise of labs/lab03_neural_memory.ipynb; each must make its check fail.

``WRONG[label]`` replaces the exercise's solution region (``labkit.assign.substitute``), indented like the
region: the body of the exercise's function (for 3.9 and 3.10 the body of an ``@njit`` function, so the
wrong answer must compile). tests/labs/test_labs.py runs all of WRONG in one notebook; every check takes
only its own answer, so no exercise depends on another's wrong answer. tests/unit/test_check_memory.py runs
the same bodies against the checks directly.
"""

WRONG = {
    # reads before it writes: o_t = S_{t-1}ᵀ q_t misses the token's own pair.
    "3.1": """
T, Dk = k.shape
S = torch.zeros(Dk, v.shape[1], dtype=v.dtype)
outs = []
for t in range(T):
    outs.append(S.T @ q[t])
    S = S + torch.outer(k[t], v[t])
return torch.stack(outs), S
""",
    # steps up the gradient instead of down.
    "3.2": """
return S + beta * torch.outer(k, S.T @ k - v)
""",
    # decays after the write: the erase reads the undecayed memory and the new pair is decayed too.
    "3.3": """
T, Dk = k.shape
S = torch.zeros(Dk, v.shape[1], dtype=v.dtype)
outs = []
for t in range(T):
    u = beta[t] * (v[t] - S.T @ k[t])
    S = alpha[t] * (S + torch.outer(k[t], u))
    outs.append(S.T @ q[t])
return torch.stack(outs), S
""",
    # a strictly causal mask in the output: o_i misses token i's own write.
    "3.4": """
C = K.shape[0]
A = (beta[:, None] * (K @ K.T)).tril(-1)
T = torch.linalg.solve_triangular(torch.eye(C, dtype=K.dtype) + A, torch.diag(beta), upper=False)
U_new = T @ V - T @ K @ S
O = Q @ S + (Q @ K.T).tril(-1) @ U_new
return O, S + K.T @ U_new
""",
    # the delta rule's ½-loss gradient: Titans' loss ‖Mᵀk − v‖² has no ½.
    "3.5": """
grad = torch.outer(k, M.T @ k - v)
S_new = eta * S - theta * grad
return (1 - alpha) * M + S_new, S_new
""",
    # f_m as a fraction of the tokens, not of the N·top_k choices: top_k times too large.
    "3.6": """
N, n = logits.shape
probs = logits.softmax(-1)
top = probs.topk(top_k, dim=-1).indices
routed = torch.zeros_like(probs).scatter(-1, top, 1.0)
kept = probs * routed
f = routed.sum(0) / N
return kept / kept.sum(-1, keepdim=True), n * (f * probs.mean(0)).sum()
""",
    # A transposed: the couplings above the diagonal instead of below.
    "3.7": """
r = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
A = -(r[:, None] * r[None, :]).triu(1) - torch.diag(torch.arange(1, N + 1, dtype=torch.float64))
return A, r
""",
    # the target on the value's position (a next-token shift), not on the query key's.
    "3.8": """
n = len(keys)
inputs = np.zeros(seq_len, dtype=np.int64)
targets = np.full(seq_len, -100, dtype=np.int64)
block = np.empty(2 * n, dtype=np.int64)
block[0::2], block[1::2] = keys, values
context = 2 * n * n_passes
inputs[:context] = np.tile(block, n_passes)
at = context + 2 * slots
inputs[at], inputs[at + 1] = keys[order], values[order]
targets[at + 1] = values[order]
return inputs, targets
""",
    # reads the old state: o = α Sᵀq misses the new pair's u (kᵀq).
    "3.9": """
Dk, Dv = S.shape
o = np.empty(Dv)
S_new = np.empty_like(S)
for e in range(Dv):
    sk = 0.0
    sq = 0.0
    for d in range(Dk):
        sk += S[d, e] * k[d]
        sq += S[d, e] * q[d]
    u = beta * (v[e] - alpha * sk)
    o[e] = alpha * sq
    for d in range(Dk):
        S_new[d, e] = alpha * S[d, e] + k[d] * u
return o, S_new
""",
    # forgets to decay the carried state by γ_n at the end of each chunk (right only while α ≡ 1).
    "3.10": """
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
    for j in range(n):
        w = G[n - 1, j]
        for d in range(Dk):
            for e in range(Dv):
                S[d, e] += w * k[t0 + j, d] * U[j, e]
return out, S
""",
}
