"""One realistic wrong answer per exercise of labs/lab01_decoding.ipynb; each must make its check fail.

``WRONG[label]`` replaces the exercise's solution region (``labkit.assign.substitute``), indented like the
region: the body of the exercise's function (for 1.9 and 1.10 the body of an ``@njit`` function, so the
wrong answer must compile). tests/labs/test_labs.py runs all of WRONG in one notebook; every check takes
only its own answer, so no exercise depends on another's wrong answer. tests/unit/test_check_decoding.py
runs the same bodies against the checks directly.
"""

WRONG = {
    # attends over the old cache, then appends: the new token never sees itself (at step 0: nothing at all).
    "1.1": """
weights = torch.softmax(K_cache @ q / q.shape[-1] ** 0.5, dim=0)
return weights @ V_cache, torch.cat([K_cache, k[None]]), torch.cat([V_cache, v[None]])
""",
    # a fresh cache at every step: after the prompt the model sees only the newest token.
    "1.2": """
logits = model(torch.tensor([prompt]), cache=model.new_cache())[0, -1]
new = []
for _ in range(n_new):
    new.append(int(logits.argmax()))
    logits = model(torch.tensor([[new[-1]]]), cache=model.new_cache())[0, -1]
return new
""",
    # the classic one: a rejected draft is replaced by a fresh sample from p, not from the residual.
    "1.3": """
if u < p[x] / q[x]:
    return True, x
return False, int(torch.multinomial(p, 1, generator=generator))
""",
    # forgets the target's own token when every draft passes: 1 + α + … + α^(γ−1).
    "1.4": """
if alpha == 1:
    return float(gamma)
return (1 - alpha**gamma) / (1 - alpha)
""",
    # marks the parent only, not the whole path to the root.
    "1.5": """
mask = torch.eye(len(parents), dtype=torch.bool)
for i, p in enumerate(parents):
    if p >= 0:
        mask[i, p] = True
return mask
""",
    # the KL the wrong way round: KL(student ‖ teacher).
    "1.6": """
log_p = torch.log_softmax(teacher_logits, dim=-1)
log_q = torch.log_softmax(student_logits, dim=-1)
kl = (log_q.exp() * (log_q - log_p)).sum(-1)
weights = decay ** torch.arange(kl.shape[1], dtype=kl.dtype)
return (kl * weights).sum(-1).mean()
""",
    # argmax of the rate: right except on ties, where it returns the first size listed, not the smallest.
    "1.7": """
rate = np.asarray(expected_tokens, dtype=float) / np.asarray(latency_s, dtype=float)
return int(sizes[int(np.argmax(rate))])
""",
    # counts token t's own neurons as resident: the window includes the current token.
    "1.8": """
hits = needed = 0
for t in range(active.shape[0]):
    resident = active[max(0, t - window):t + 1].any(dim=0)
    hits += int((active[t] & resident).sum())
    needed += int(active[t].sum())
return hits / needed if needed else 1.0
""",
    # the running max starts at 0 instead of -inf: fine until every score is below about -745.
    "1.9": """
T, D = K.shape
m, l = 0.0, 0.0
acc = np.zeros(D)
for t in range(T):
    s = 0.0
    for d in range(D):
        s += q[d] * K[t, d]
    s *= scale
    if s > m:
        c = np.exp(m - s)
        l *= c
        for d in range(D):
            acc[d] *= c
        m = s
    p = np.exp(s - m)
    l += p
    for d in range(D):
        acc[d] += p * V[t, d]
return acc / l
""",
    # ignores the bitsets: a causal mask over the tree (node i sees every earlier node).
    "1.10": """
N, D = q.shape
P = K_prefix.shape[0]
out = np.empty((N, D))
for i in range(N):
    m, l = -np.inf, 0.0
    acc = np.zeros(D)
    for j in range(P + i + 1):
        k = K_prefix[j] if j < P else K_tree[j - P]
        v = V_prefix[j] if j < P else V_tree[j - P]
        s = 0.0
        for d in range(D):
            s += q[i, d] * k[d]
        s *= scale
        if s > m:
            c = np.exp(m - s)
            l *= c
            for d in range(D):
                acc[d] *= c
            m = s
        p = np.exp(s - m)
        l += p
        for d in range(D):
            acc[d] += p * v[d]
    for d in range(D):
        out[i, d] = acc[d] / l
return out
""",
}
