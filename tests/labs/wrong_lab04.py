"""One realistic wrong answer per exercise of labs/lab04_continual_merging.ipynb; each must make its check fail.

``WRONG[label]`` replaces the exercise's solution region (``labkit.assign.substitute``), indented like the
region: the body of the exercise's function (for 4.9 and 4.10 the body of an ``@njit`` function, so the
wrong answer must compile). tests/labs/test_labs.py runs all of WRONG in one notebook; 4.6 calls the student's
``opcm_projection`` of 4.5, so it is listed in DEPENDENT (it has its own wrong answer too).
tests/unit/test_check_continual.py runs the same bodies against the checks directly, and the further wrong
answers of 4.5 in MORE_WRONG_4_5 (the two-sided projection in WRONG, one-sided, half masks, a mask on τ's own
entries): OPCM's masked projection must be told apart from each of them.
"""

DEPENDENT = {"4.6"}  # builds on 4.5's opcm_projection

_SPLIT = """
U, s, Vh = torch.linalg.svd(D, full_matrices=True)
if s.sum() <= 0:
    return tau.clone(), 0
mass = torch.cumsum(s, 0) / s.sum()
r = min(int((mass < alpha).sum()) + 1, len(s))
"""

# Further wrong answers of 4.5, each a body of opcm_projection that its check must reject with the named hint
# (tests/unit/test_check_continual.py runs them; the notebook run uses WRONG only): {name: (body, hint regex)}.
MORE_WRONG_4_5 = {
    # one-sided: the left projection only.
    "left": (_SPLIT + """
Ur = U[:, :r]
return tau - Ur @ (Ur.T @ tau), r
""", "one-sided"),
    # zeroes every P_ii but forgets the top-left r × r block.
    "diagonal_only": (_SPLIT + """
P = U.T @ tau @ Vh.T
P.diagonal().zero_()
return U @ P @ Vh, r
""", "top-left r × r block"),
    # zeroes the top-left r × r block but not the diagonal below it: not Frobenius-orthogonal to D.
    "block_only": (_SPLIT + """
P = U.T @ tau @ Vh.T
P[:r, :r] = 0.0
return U @ P @ Vh, r
""", "EVERY i"),
    # masks τ's own entries instead of τ in D's singular bases.
    "raw": (_SPLIT + """
t = tau.clone()
t[:r, :r] = 0.0
t.diagonal().zero_()
return t, r
""", "singular bases"),
}

WRONG = {
    # averages the task vectors instead of summing them (right only for one model).
    "4.1": """
merged = {}
for name, theta0 in base.items():
    tau_sum = sum(theta[name] - theta0 for theta in finetuned)
    merged[name] = theta0 + lam * tau_sum / len(finetuned)
return merged
""",
    # forgetting takes the max over every row, the last one included: it can never be negative.
    "4.2": """
acc = R[-1].mean()
bwt = (R[-1, :-1] - np.diag(R)[:-1]).mean()
forgetting = (R[:, :-1].max(0) - R[-1, :-1]).mean()
return acc, bwt, forgetting
""",
    # sums the squared gradients of every class without weighting them by p(c|x).
    "4.3": """
N = x.shape[0]
z = x @ W1.T + b1
h = z.clamp(min=0)
p = (h @ W2.T + b2).softmax(-1)
F = [torch.zeros_like(w) for w in (W1, b1, W2, b2)]
for c in range(W2.shape[0]):
    d_out = -p.clone()
    d_out[:, c] += 1.0
    d_hid = (d_out @ W2) * (z > 0)
    F[0] += (d_hid ** 2).T @ x ** 2
    F[1] += (d_hid ** 2).sum(0)
    F[2] += (d_out ** 2).T @ h ** 2
    F[3] += (d_out ** 2).sum(0)
return tuple(f / N for f in F)
""",
    # a positive power: old tasks rehearsed more than recent ones.
    "4.4": """
w = ages ** exponent
p = w / w.sum()
cdf = np.cumsum(p)
picks = np.searchsorted(cdf / cdf[-1], u, side="right")
return p, picks
""",
    # the TWO-SIDED projection (I − U_r U_rᵀ) τ (I − V_r V_rᵀ), not OPCM's mask: it removes the cross blocks and
    # keeps the diagonal P_ii below r, so τ̃ is not Frobenius-orthogonal to D. The check must tell them apart.
    "4.5": """
U, s, Vh = torch.linalg.svd(D, full_matrices=False)
if s.sum() <= 0:
    return tau.clone(), 0
mass = torch.cumsum(s, 0) / s.sum()
r = min(int((mass < alpha).sum()) + 1, len(s))
Ur, Vr = U[:, :r], Vh[:r].T
t = tau - Ur @ (Ur.T @ tau)
t = t - (t @ Vr) @ Vr.T
return t, r
""",
    # rescales to the latest task vector's norm instead of the running mean.
    "4.6": """
tau_tilde, _ = opcm_projection(D, tau, alpha)
D_new = D + tau_tilde
mean_new = mean_norm + (float(tau.norm()) - mean_norm) / t
lam = float(D_new.norm()) / float(tau.norm())
return D_new, lam, mean_new
""",
    # the plain mean over all T task vectors (zeros and disagreeing entries included).
    "4.7": """
T, P = tvs.shape
k = max(1, round(density * P))
idx = tvs.abs().topk(k, dim=1).indices
trimmed = torch.zeros_like(tvs).scatter(1, idx, tvs.gather(1, idx))
return trimmed.mean(0)
""",
    # the energy rule on singular values instead of their squares.
    "4.8": """
U, s, _ = torch.linalg.svd(A, full_matrices=False)
mass = torch.cumsum(s, 0) / s.sum()
r = min(int((mass < eps).sum()) + 1, len(s))
U = U[:, :r]
return U, G - (G @ U) @ U.T
""",
    # elects the sign by counting votes instead of by mass.
    "4.9": """
T, P = tvs.shape
out = np.zeros(P)
for p in range(P):
    votes = 0
    for k in range(T):
        v = tvs[k, p]
        if abs(v) >= thresholds[k]:
            votes += 1 if v > 0 else -1
    if votes == 0:
        continue
    total = 0.0
    count = 0
    for k in range(T):
        v = tvs[k, p]
        if abs(v) >= thresholds[k] and (v > 0) == (votes > 0):
            total += v
            count += 1
    if count > 0:
        out[p] = total / count
return out
""",
    # sums the squares of the OLD delta.
    "4.10": """
merged = np.empty_like(w0)
new_delta = np.empty_like(delta)
sq = 0.0
for i in range(w0.size):
    sq += np.float64(delta[i]) * np.float64(delta[i])
    d = delta[i] + mu * tau[i]
    new_delta[i] = d
    merged[i] = w0[i] + lam * d
return merged, new_delta, sq
""",
}
