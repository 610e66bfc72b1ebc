"""Chapter 1 — Decoding: the KV cache, speculative sampling and prompt lookup, with their cost model.

The names follow the chapter, top to bottom:

* **sampling one token**: ``next_token_probs`` turns logits into the distribution we sample from
  (temperature, then top-k, then top-p); ``sample_next`` draws from it (argmax when temperature is 0).
* **autoregressive decoding**: ``generate`` with the **KV cache** (each step feeds one new token and
  attends over the cached keys and values) or without it (``cache=False`` recomputes the whole prefix
  every step: the baseline the cache beats).
* **speculative sampling** (Leviathan et al. 2023; Chen et al. 2023): ``speculative_generate``. A small
  *draft* model proposes γ tokens, the *target* scores all γ+1 positions in one forward pass, and
  ``labkit.kernels.verify_sample`` accepts draft token x_i with probability min(1, p_i(x_i)/q_i(x_i)),
  resamples the first rejected one from norm(max(0, p_i − q_i)), or adds a bonus token from p_{γ+1}.
  The output is distributed exactly as the target's own samples; at temperature 0 it equals greedy.
* **prompt lookup** (a single-model method): ``prompt_lookup_generate`` proposes the tokens that followed
  the most recent earlier occurrence of the last n-gram (``find_candidates``) and verifies them greedily
  (``greedy_verify``) in one forward pass.
* **the cost model**: ``expected_tokens_per_call`` (1 − α^{γ+1})/(1 − α), ``measure_latency`` (this
  machine's latency curve: one forward of n new tokens against a cached prefix) and
  ``predicted_speedup`` (expected tokens per round over the time of a round, against one target step
  per token).

Every decoder works on one sequence (batch size 1), takes a prompt as a list of token ids or a 1-D
LongTensor, and returns the *new* tokens as a ``list[int]``; the speculative decoders also return a
``DecodeStats``. Models follow ``labkit.models.tinylm.TinyLM``: ``model(tokens (1, T), cache=cache)``
-> logits (1, T, V), ``model.new_cache()``, ``cache.length``, ``cache.crop(n)``, ``model.config``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from labkit.kernels.verify_sample import verify_sample
from labkit.runtime import progress, progress_enabled

__all__ = [
    "DecodeStats",
    "expected_tokens_per_call",
    "find_candidates",
    "generate",
    "greedy_verify",
    "measure_latency",
    "next_token_probs",
    "predicted_speedup",
    "predicted_speedup_one_model",
    "prompt_lookup_generate",
    "sample_next",
    "speculative_generate",
]

PROGRESS_MIN_TOKENS = 64  # generations this long get a progress bar, shown once they run past 2 s

# --------------------------------------------------------------------------------------------------------
# input checking and small helpers
# --------------------------------------------------------------------------------------------------------


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    return float(temperature)


def _check_top_k_top_p(top_k, top_p) -> None:
    if top_k is not None:
        _check_int("top_k", top_k, 1)
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")


def _context(model) -> int:
    return int(model.config.context)


def _vocab_size(model) -> int:
    return int(model.config.vocab_size)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _check_prompt(prompt, model, max_new_tokens: int, others: Sequence = ()) -> list[int]:
    """The prompt as a list of ids; it and the new tokens must fit the context of ``model`` (and ``others``)."""
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() != 1 or prompt.is_floating_point():
            raise ValueError(f"prompt must be a 1-D tensor of token ids, got shape {tuple(prompt.shape)} "
                             f"of {prompt.dtype}")
        prompt = prompt.tolist()
    try:
        ids = [int(t) for t in prompt]
    except (TypeError, ValueError) as err:
        raise ValueError(f"prompt must be a sequence of int token ids, got {type(prompt).__name__}") from err
    if not ids:
        raise ValueError("prompt must hold at least one token, got an empty prompt")
    vocab = _vocab_size(model)
    if min(ids) < 0 or max(ids) >= vocab:
        raise ValueError(f"prompt must hold ids in 0..{vocab - 1}, got {min(ids)}..{max(ids)}")
    context = min(_context(m) for m in (model, *others))
    if len(ids) > context:
        raise ValueError(f"prompt must be at most the context of {context} tokens, got {len(ids)} tokens")
    if len(ids) + max_new_tokens > context:
        raise ValueError(f"max_new_tokens must be <= {context - len(ids)} (context {context} - prompt of "
                         f"{len(ids)}), got {max_new_tokens}")
    return ids


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A private random stream: ``seed``, or one drawn from torch's global RNG (so ``labkit.setup`` seeds it)."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    return torch.Generator(device=device).manual_seed(_check_int("seed", seed, 0))


def _extend(model, cache, sequence: list[int]) -> torch.Tensor:
    """Feed the tokens of ``sequence`` that ``cache`` does not hold yet; their logits (T, V).

    The cache holds ``sequence[:cache.length]``; the model appends the rest (positions continue from
    ``cache.length``, token shift reads the previous token from the cache).
    """
    new = torch.tensor([sequence[cache.length:]], dtype=torch.long, device=cache.tokens.device)
    return model(new, cache=cache)[0]


class _NoBar:
    """Stands in for the progress bar of short generations (creating a tqdm bar costs ~0.5 ms)."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        pass


def _bar(total: int, desc: str):
    """A ``labkit.progress`` bar for generations of ``PROGRESS_MIN_TOKENS`` or more, shown after 2 s."""
    if total < PROGRESS_MIN_TOKENS or not progress_enabled():
        return _NoBar()
    return progress(total=total, desc=desc, delay=2.0)


# --------------------------------------------------------------------------------------------------------
# 1. Sampling one token
# --------------------------------------------------------------------------------------------------------


def next_token_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution the next token is drawn from. logits: (..., V) -> probs (..., V) float32.

    softmax(logits / temperature), then keep the ``top_k`` most likely tokens, then the smallest set of
    most likely tokens whose mass reaches ``top_p`` (nucleus), renormalised. Temperature 0 is the limit:
    all mass on the argmax.
    """
    temperature = _check_temperature(temperature)
    _check_top_k_top_p(top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_k is not None and top_k < probs.shape[-1]:
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, probs.topk(top_k, dim=-1).indices, True)
        probs = probs * keep
    if top_p is not None and top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens more likely than this one
        keep_sorted = mass_before < top_p * probs.sum(-1, keepdim=True)  # the most likely token always stays
        probs = probs * torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return probs / probs.sum(-1, keepdim=True)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """One token id drawn from ``next_token_probs(logits, ...)``; the argmax when temperature is 0. logits: (V,)."""
    if logits.dim() != 1:
        raise ValueError(f"logits must have shape (V,), got {tuple(logits.shape)}")
    if _check_temperature(temperature) == 0:
        _check_top_k_top_p(top_k, top_p)
        return int(logits.argmax())
    probs = next_token_probs(logits, temperature, top_k, top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


# --------------------------------------------------------------------------------------------------------
# 2. Autoregressive decoding, with and without the KV cache
# --------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def generate(
    model,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    cache: bool = True,
) -> list[int]:
    """Continue ``prompt`` by ``max_new_tokens`` tokens, one forward pass per token. Returns the new ids.

    Greedy when ``temperature == 0``, else sampled (temperature, top-k, top-p; ``seed`` fixes the draws).
    ``cache=True``: prefill the prompt once into a KV cache, then feed one token per step.
    ``cache=False``: feed the whole sequence every step (the cost grows with its length; same tokens).
    """
    temperature = _check_temperature(temperature)
    _check_top_k_top_p(top_k, top_p)
    max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 0)
    sequence = _check_prompt(prompt, model, max_new_tokens)
    device = _device(model)
    generator = _make_generator(seed, device)
    kv_cache = model.new_cache(batch_size=1) if cache else None

    with _bar(max_new_tokens, "generate") as bar:
        for _ in range(max_new_tokens):
            if kv_cache is not None:
                logits = _extend(model, kv_cache, sequence)[-1]  # the prompt on step 0, then one token
            else:
                logits = model(torch.tensor([sequence], device=device))[0, -1]  # the whole prefix, again
            sequence.append(sample_next(logits, temperature, top_k, top_p, generator))
            bar.update(1)
    return sequence[len(sequence) - max_new_tokens:]


# --------------------------------------------------------------------------------------------------------
# 3. Speculative sampling: a draft proposes, the target verifies in one pass
# --------------------------------------------------------------------------------------------------------


@dataclass
class DecodeStats:
    """What a draft-and-verify decoder did.

    ``accepted[r]`` draft tokens were accepted out of ``proposed[r]`` in round r; every round makes one
    target forward pass and commits ``accepted[r] + 1`` tokens. ``target_calls`` and ``draft_calls`` count
    every forward pass, the prompt's prefill included.
    """

    target_calls: int = 0
    draft_calls: int = 0
    accepted: list[int] = field(default_factory=list)
    proposed: list[int] = field(default_factory=list)

    @property
    def rounds(self) -> int:
        return len(self.accepted)

    @property
    def alpha(self) -> float:
        """The acceptance rate α: accepted / tested draft tokens.

        A round tests its draft tokens in order until the first rejection, so it tests
        ``accepted + 1`` of them (all ``proposed`` when none is rejected). Under the model of the text
        (each token accepted independently with probability α) this is the maximum-likelihood α.
        """
        tested = sum(min(a + 1, p) for a, p in zip(self.accepted, self.proposed))
        return sum(self.accepted) / tested if tested else math.nan

    @property
    def tokens_per_call(self) -> float:
        """Mean tokens committed per verifying target call: compare with ``expected_tokens_per_call``."""
        return sum(a + 1 for a in self.accepted) / self.rounds if self.rounds else math.nan


@torch.inference_mode()
def speculative_generate(
    target,
    draft,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    gamma: int = 4,
    temperature: float = 0.0,
    seed: int | None = None,
    backend: str = "auto",
) -> tuple[list[int], DecodeStats]:
    """Speculative sampling (Leviathan et al. 2023, Algorithm 1). Returns (new ids, ``DecodeStats``).

    One round: the ``draft`` proposes x_1..x_γ autoregressively with its KV cache, keeping each q_i; the
    ``target`` scores [last token, x_1..x_γ] in ONE forward pass with its cache, giving p_1..p_{γ+1};
    ``labkit.kernels.verify_sample`` accepts the first n draft tokens and draws the next token (the
    residual norm(max(0, p − q)) at a rejection, the bonus from p_{γ+1} when all pass); both caches are
    cropped back to the committed tokens. At ``temperature == 0`` drafts are the draft's argmax and
    acceptance is "equals the target's argmax": the output is exactly ``generate(target, ...)``'s.
    """
    temperature = _check_temperature(temperature)
    gamma = _check_int("gamma", gamma, 1)
    max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 0)
    if _vocab_size(draft) != _vocab_size(target):
        raise ValueError(f"draft must share the target's vocabulary of {_vocab_size(target)} tokens, "
                         f"got a draft with {_vocab_size(draft)}")
    sequence = _check_prompt(prompt, target, max_new_tokens, others=(draft,))
    greedy = temperature == 0
    device = _device(target)
    generator = _make_generator(seed, device)
    end = len(sequence) + max_new_tokens
    stats = DecodeStats()

    # Invariant between rounds: both caches hold every committed token but the last one.
    target_cache, draft_cache = target.new_cache(batch_size=1), draft.new_cache(batch_size=1)
    if len(sequence) > 1:
        target(torch.tensor([sequence[:-1]], device=device), cache=target_cache)
        draft(torch.tensor([sequence[:-1]], device=_device(draft)), cache=draft_cache)
        stats.target_calls += 1
        stats.draft_calls += 1

    with _bar(max_new_tokens, "speculative") as bar:
        while len(sequence) < end:
            # Draft no token past the end (a bonus token past it is cut below); end <= context, so the
            # verify pass, which writes positions up to len(sequence) - 1 + gamma_round, fits.
            gamma_round = min(gamma, end - len(sequence))

            # 1. The draft proposes x_1..x_γ, sampling x_i from q_i and recording q_i (greedy: its argmax).
            draft_tokens, draft_probs = [], []
            for _ in range(gamma_round):
                logits = _extend(draft, draft_cache, sequence + draft_tokens)[-1].to(device)
                stats.draft_calls += 1
                if greedy:
                    draft_tokens.append(int(logits.argmax()))
                else:
                    q = next_token_probs(logits, temperature)
                    draft_tokens.append(int(torch.multinomial(q, 1, generator=generator)))
                    draft_probs.append(q)

            # 2. The target scores all γ+1 positions in one pass: logits of p_1..p_{γ+1}.
            target_logits = _extend(target, target_cache, sequence + draft_tokens)  # (γ+1, V)
            stats.target_calls += 1

            # 3. Accept a prefix of the draft, then draw the next token (greedy needs neither q nor u).
            n_accepted, next_token = verify_sample(
                target_logits,
                None if greedy else torch.stack(draft_probs),
                torch.tensor(draft_tokens, device=device),
                None if greedy else torch.rand(gamma_round + 1, generator=generator, device=device),
                temperature=1.0 if greedy else temperature,
                greedy=greedy,
                backend=backend,
            )
            n_accepted, next_token = int(n_accepted), int(next_token)
            committed = len(sequence)
            sequence += draft_tokens[:n_accepted] + [next_token]
            stats.accepted.append(n_accepted)
            stats.proposed.append(gamma_round)

            # 4. Crop both caches back to the committed tokens but the last one. When every draft token
            #    passed, the draft's cache lacks x_γ: the next round feeds it together with the new token.
            target_cache.crop(len(sequence) - 1)
            draft_cache.crop(min(draft_cache.length, len(sequence) - 1))
            bar.update(min(len(sequence), end) - committed)
    return sequence[end - max_new_tokens:end], stats


# --------------------------------------------------------------------------------------------------------
# 4. Prompt lookup: the context itself is the draft
# --------------------------------------------------------------------------------------------------------


def find_candidates(tokens: Sequence[int], ngram: int = 3, num_draft: int = 8) -> list[int]:
    """The draft of prompt lookup: what followed the most recent earlier occurrence of the last n-gram.

    Tries n = ``ngram``, ngram − 1, ..., 1 and returns ``num_draft`` tokens that followed the latest
    earlier match of ``tokens[-n:]``; an empty list when even the last token never occurred before.
    Inside a repeating run the latest match is close to the end and its continuation is cut short; the
    draft then continues the run periodically (period = distance from the match to the end), which is
    what the text would do if the repetition goes on.
    """
    ngram, num_draft = _check_int("ngram", ngram, 1), _check_int("num_draft", num_draft, 1)
    tokens = np.asarray(tokens, dtype=np.int64)
    for n in range(min(ngram, len(tokens) - 1), 0, -1):
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)  # every n-gram but the last one
        starts = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
        if starts.size:
            follow = starts[-1] + n  # the most recent occurrence; its continuation starts here
            period = len(tokens) - follow
            return tokens[follow + np.arange(num_draft) % period].tolist()
    return []


def greedy_verify(target_logits: torch.Tensor, draft_tokens: Sequence[int]) -> tuple[int, int]:
    """Greedy verification. target_logits: (k+1, V) at [last token, x_1..x_k]; draft_tokens: k ids.

    Accept x_i while it equals the target's argmax; the next token is the target's argmax after the
    accepted prefix. Returns (n_accepted, next_token), exactly the tokens greedy decoding would produce.
    """
    choice = target_logits.argmax(-1).tolist()  # the target's own greedy token at each position
    n = 0
    while n < len(draft_tokens) and draft_tokens[n] == choice[n]:
        n += 1
    return n, choice[n]


@torch.inference_mode()
def prompt_lookup_generate(
    model,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    ngram: int = 3,
    num_draft: int = 8,
) -> tuple[list[int], DecodeStats]:
    """Greedy decoding that drafts by looking up the context (prompt + generated). Returns (new ids, stats).

    Each round: ``find_candidates`` proposes up to ``num_draft`` tokens; the model scores [last token,
    drafts] in one forward pass; ``greedy_verify`` keeps the prefix greedy decoding would have produced
    plus one token. Output identical to ``generate(model, prompt, max_new_tokens)``. Copying and key–value
    lookup texts repeat long spans, so many tokens pass per call there.
    """
    max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 0)
    ngram, num_draft = _check_int("ngram", ngram, 1), _check_int("num_draft", num_draft, 1)
    sequence = _check_prompt(prompt, model, max_new_tokens)
    end = len(sequence) + max_new_tokens
    stats = DecodeStats()
    cache = model.new_cache(batch_size=1)
    if len(sequence) > 1:  # the cache holds every committed token but the last one
        model(torch.tensor([sequence[:-1]], device=_device(model)), cache=cache)
        stats.target_calls += 1

    with _bar(max_new_tokens, "prompt lookup") as bar:
        while len(sequence) < end:
            draft_tokens = find_candidates(sequence, ngram, num_draft)[:end - len(sequence)]
            logits = _extend(model, cache, sequence + draft_tokens)  # (k+1, V)
            stats.target_calls += 1
            n_accepted, next_token = greedy_verify(logits, draft_tokens)
            committed = len(sequence)
            sequence += draft_tokens[:n_accepted] + [next_token]
            stats.accepted.append(n_accepted)
            stats.proposed.append(len(draft_tokens))
            cache.crop(len(sequence) - 1)
            bar.update(min(len(sequence), end) - committed)
    return sequence[end - max_new_tokens:end], stats


# --------------------------------------------------------------------------------------------------------
# 5. The cost model
# --------------------------------------------------------------------------------------------------------


def expected_tokens_per_call(alpha, gamma):
    """Expected tokens committed per target call: (1 − α^{γ+1}) / (1 − α), and γ + 1 at α = 1.

    Each of the γ draft tokens is accepted with probability α until the first rejection, and the round
    adds one token of the target's own, so E = 1 + α + α² + ... + α^γ. ``alpha`` in [0, 1] and ``gamma`` >= 0
    (ints) broadcast as numpy arrays; scalars in, float out.
    """
    a, g = np.asarray(alpha, dtype=np.float64), np.asarray(gamma)
    if np.any(~((a >= 0) & (a <= 1))):
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    whole = g.dtype.kind in "iu" or (g.dtype.kind == "f" and bool(np.all(g == np.round(g))))
    if not whole or np.any(g < 0):
        raise ValueError(f"gamma must be an int >= 0, got {gamma!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        log_a = np.log(a)
        # expm1 keeps (1 − α^{γ+1}) / (1 − α) accurate when α is close to 1
        tokens = np.where(a == 1, g + 1.0, np.expm1((g + 1) * log_a) / np.expm1(log_a))
    return float(tokens) if tokens.ndim == 0 else tokens


@torch.inference_mode()
def measure_latency(
    model, n_tokens_list: Sequence[int] = (1, 2, 4, 8, 16), prefix_len: int = 64, repeats: int = 5
) -> dict[int, float]:
    """This machine's latency curve: {n: median ms of one forward of n new tokens after a cached prefix}.

    The prefix (``prefix_len`` random tokens) is prefilled once; each timed call appends n tokens and the
    cache is cropped back. One untimed warm-up call per n; CUDA is synchronised around each call.
    """
    n_tokens_list = [_check_int("n_tokens_list entries", n, 1) for n in n_tokens_list]
    if not n_tokens_list:
        raise ValueError("n_tokens_list must hold at least one token count, got an empty list")
    prefix_len, repeats = _check_int("prefix_len", prefix_len, 0), _check_int("repeats", repeats, 1)
    if prefix_len + max(n_tokens_list) > _context(model):
        raise ValueError(f"prefix_len must be <= {_context(model) - max(n_tokens_list)} (context "
                         f"{_context(model)} - the largest n {max(n_tokens_list)}), got {prefix_len}")
    device, vocab = _device(model), _vocab_size(model)
    random = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cache = model.new_cache(batch_size=1)
    if prefix_len:
        model(torch.randint(vocab, (1, prefix_len), generator=random).to(device), cache=cache)

    curve = {}
    for n in n_tokens_list:
        new = torch.randint(vocab, (1, n), generator=random).to(device)
        times = []
        for _ in range(repeats + 1):  # the first call warms up and is not counted
            sync()
            start = time.perf_counter()
            model(new, cache=cache)
            sync()
            times.append(time.perf_counter() - start)
            cache.crop(prefix_len)
        curve[n] = 1e3 * statistics.median(times[1:])
    return curve


def predicted_speedup(
    alpha: float, gamma: int, latency_curve: Mapping[int, float] | Callable[[int], float], draft_latency: float
) -> float:
    """The cost model of speculative decoding: its tokens per second over plain decoding's.

    A round costs γ draft steps plus one target forward of γ+1 tokens and yields
    ``expected_tokens_per_call(α, γ)`` tokens; plain decoding pays one target step, ``latency_curve(1)``,
    per token::

        speedup = E(α, γ) · t(1) / (γ · t_draft + t(γ + 1))

    ``latency_curve``: {n: ms} from ``measure_latency`` (linear interpolation between measured n) or a
    function n -> ms; ``draft_latency``: ms of one draft step. With a flat curve and a free draft this is
    E(α, γ); on a compute-bound CPU t(γ+1) grows with γ and eats the gain.
    """
    tokens = expected_tokens_per_call(alpha, gamma)
    gamma = int(gamma)
    t = _latency_function(latency_curve, gamma + 1, "gamma + 1")
    if isinstance(draft_latency, bool) or not isinstance(draft_latency, (int, float)) or not draft_latency >= 0:
        raise ValueError(f"draft_latency must be a number of ms >= 0, got {draft_latency!r}")
    return tokens * t(1) / (gamma * draft_latency + t(gamma + 1))


def predicted_speedup_one_model(
    tokens_per_call: float, inputs_per_call: float, latency_curve: Mapping[int, float] | Callable[[int], float],
    overhead_ms: float = 0.0, plain_overhead_ms: float = 0.0,
) -> float:
    """The same cost model for single-model methods (prompt lookup, Medusa, PPD): no draft model, so

        speedup = tokens per call · (t(1) + o_plain) / (t(inputs per call) + o),

    where a call feeds ``inputs_per_call`` tokens (the last token, the guesses, PPD's prompt tokens) and
    commits ``tokens_per_call``; ``latency_curve`` as in ``predicted_speedup`` (interpolated in n).
    ``overhead_ms`` o and ``plain_overhead_ms`` o_plain: what one round of the method / one step of plain
    decoding costs beyond the bare forward pass (bookkeeping, sampling; for speculative decoding run
    through this formula, also the draft's steps), measured once on a calibration prompt.
    """
    for name, value in (("tokens_per_call", tokens_per_call), ("inputs_per_call", inputs_per_call)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
            raise ValueError(f"{name} must be a number >= 1, got {value!r}")
    t = _latency_function(latency_curve, inputs_per_call, "inputs_per_call")
    return tokens_per_call * (t(1) + plain_overhead_ms) / (t(inputs_per_call) + overhead_ms)


def _latency_function(latency_curve, largest: float, what: str) -> Callable[[float], float]:
    """latency_curve ({n: ms} or n -> ms) as a function of n, checked to reach n = ``largest``."""
    if isinstance(latency_curve, Mapping):
        ns = sorted(latency_curve)
        if not ns or 1 not in latency_curve or largest > ns[-1]:
            raise ValueError(f"latency_curve must hold n = 1 and reach n = {what} = {largest}, got n in {ns}")
        times = [latency_curve[n] for n in ns]
        return lambda n: float(np.interp(n, ns, times))
    if callable(latency_curve):
        return latency_curve
    raise ValueError(f"latency_curve must be a dict {{n: ms}} or a function n -> ms, "
                     f"got {type(latency_curve).__name__}")
