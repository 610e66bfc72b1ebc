"""One realistic wrong answer per exercise of labs/lab02_kv_compression.ipynb; each must make its check fail.

``WRONG[label]`` replaces the exercise's solution region (``labkit.assign.substitute``), indented like the
region: the body of the exercise's function (for 2.9 and 2.10 the body of an ``@njit`` function, so the
wrong answer must compile). tests/labs/test_labs.py runs all of WRONG in one notebook; every check takes
only its own answer, so no exercise depends on another's wrong answer. tests/unit/test_check_kv.py runs
the same bodies against the checks directly.
"""

WRONG = {
    # counts the keys only: forgets that the cache holds values too.
    "2.1": """
return n_layers * n_kv_heads * head_dim * bits // 8 * n_tokens
""",
    # the covariance of the raw rows: the mean leaks into the first direction.
    "2.2": """
mean = X.mean(0)
evals, evecs = torch.linalg.eigh(X.T @ X / (X.shape[0] - 1))
return mean, evecs.flip(-1)[:, :r]
""",
    # the factors the wrong way round: (I + A)(I − A)^{-1} is orthogonal too, but it is Uᵀ.
    "2.3": """
I = torch.eye(A.shape[-1], dtype=A.dtype)
return torch.linalg.solve(I - A, I + A)
""",
    # projects x itself, not x − μ: fine only for centred data.
    "2.4": """
losses = []
for r in ranks:
    Ur = basis[:, :r]
    losses.append(((X - X @ Ur @ Ur.T) ** 2).sum(-1).mean())
return torch.stack(losses).mean()
""",
    # per-token quantization (each row its own scale): one outlier channel ruins every token.
    "2.5": """
lo, hi = K.amin(1, keepdim=True), K.amax(1, keepdim=True)
scale = (hi - lo) / (2**bits - 1)
scale = torch.where(scale > 0, scale, torch.ones_like(scale))
return torch.round((K - lo) / scale) * scale + lo
""",
    # a window of n_keep recent tokens plus the sinks: n_sink more than the budget.
    "2.6": """
if n_keep >= n_tokens:
    return torch.arange(n_tokens)
recent = torch.arange(max(n_sink, n_tokens - n_keep), n_tokens)
return torch.cat([torch.arange(min(n_sink, n_tokens)), recent])
""",
    # forgets the causal mask: every query sees every key.
    "2.7": """
probs = torch.softmax(Q @ K.T / Q.shape[-1] ** 0.5, dim=-1)
return probs.sum(0)
""",
    # cuts where the loss is smallest now, not where the cut raises it least.
    "2.8": """
H, _, D = costs.shape
ranks = np.full((H, 2), D)
while ranks.sum() > budget * 2 * H * D + 1e-9:
    best, where = np.inf, None
    for h in range(H):
        for j in range(2):
            r = ranks[h, j]
            if r > 1 and costs[h, j, r - 1] < best:
                best, where = costs[h, j, r - 1], (h, j)
    if where is None:
        break
    ranks[where] -= 1
return ranks
""",
    # rescales the denominator l but not the accumulator when the running max grows.
    "2.9": """
T, rk = Kc.shape
rv = Vc.shape[1]
D = q.shape[0]
qr = np.zeros(rk)
for j in range(rk):
    for d in range(D):
        qr[j] += U_k[d, j] * q[d]
m, l = -np.inf, 0.0
acc = np.zeros(rv)
for t in range(T):
    s = 0.0
    for j in range(rk):
        s += qr[j] * Kc[t, j]
    s *= scale
    if s > m:
        l *= np.exp(m - s)
        m = s
    p = np.exp(s - m)
    l += p
    for j in range(rv):
        acc[j] += p * Vc[t, j]
out = np.zeros(D)
for d in range(D):
    for j in range(rv):
        out[d] += U_v[d, j] * acc[j]
    out[d] /= l
return out
""",
    # forgets the zero point: codes · scale only.
    "2.10": """
T, D = codes.shape
out = np.zeros(T)
for t in range(T):
    g = t // group
    s = 0.0
    for d in range(D):
        s += q[d] * (codes[t, d] * scale[g, d])
    out[t] = s
return out
""",
}
