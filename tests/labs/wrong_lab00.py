"""One realistic wrong answer per exercise of labs/lab00_memory.ipynb; each must make its check fail.

``WRONG[label]`` replaces the exercise's first solution region (``labkit.assign.substitute``), indented like
the region: a function body. Exercises 0.1, 0.3 and 0.5 have a second region (``read``, ``hopfield_step``,
the ``alpha_c = ...`` line) that keeps its solution. tests/labs/test_labs.py runs all of WRONG in one
notebook (and WRONG_VALUES in another); every check takes only its own answers, so no exercise depends on
another's wrong answer. tests/unit/test_check_prologue.py runs the same bodies against the checks directly.
"""

WRONG = {
    # write() builds the transpose Σ k vᵀ: shape (dk, dv) instead of (dv, dk).
    "0.1": "return keys.T @ values",
    # counts the pair being read as its own crosstalk: n/d instead of (n - 1)/d.
    "0.2": "return n / d",
    # Hebb's rule without the zero diagonal (every neuron excites itself by n/d).
    "0.3": "return patterns.T @ patterns / patterns.shape[1]",
    # a textbook softmax without the max subtraction: exp(β qᵀk) overflows for large β.
    "0.4": """
weights = torch.exp(beta * (queries @ keys.T))
return (weights / weights.sum(dim=-1, keepdim=True)) @ values
""",
    # fraction of stable *bits* instead of stable *patterns*.
    "0.5": """
patterns = tensor(data.binary_patterns(n, d, seed))
W = hebbian_weights(patterns)
return (hopfield_step(W, patterns) == patterns).double().mean().item()
""",
    # the classic online-softmax bug: the denominator is rescaled when the max moves, the accumulator is not.
    "0.6": """
m = torch.tensor(float("-inf"), dtype=q.dtype)
l = torch.zeros((), dtype=q.dtype)
acc = torch.zeros_like(q)
for K_chunk, V_chunk in chunks:
    s = scale * (K_chunk @ q)
    m_new = torch.maximum(m, s.max())
    p = torch.exp(s - m_new)
    l = l * torch.exp(m - m_new) + p.sum()
    acc = acc + p @ V_chunk
    m = m_new
return acc / l
""",
    # decays after adding, so even the newest pair is stored at strength λ.
    "0.7": """
W = torch.zeros(values.shape[1], keys.shape[1], dtype=keys.dtype)
for k, v in zip(keys, values):
    W = decay * (W + torch.outer(v, k))
return W
""",
}

# The value answer of exercise 0.5 (its second region), wrong the way students get it wrong: quoting the
# textbook's d → ∞ threshold instead of measuring the finite-size one.
WRONG_VALUES = {"0.5": "alpha_c = 0.138"}
