"""TinyLM: the small Llama-style decoder that chapters 1 and 2 decode from and dissect.

One block, top to bottom (pre-norm, as in Llama)::

    h = h + Attention(RMSNorm(h))        # RoPE on q and k, optional grouped-query K/V heads
    h = h + FFN(RMSNorm(h))              # FFN(x) = W_down (relu(W_gate x) * (W_up x))

The gate uses ReLU (not SiLU) so that the hidden activations are exactly zero for most units: the
sparsity chapter 2 measures is real, not "small".

**Token shift.** The input of position t is ``E[x_t] + E_prev[x_{t-1}]``: a second embedding of the
*previous* token. Induction ("after A came B before, so after A comes B now") needs each position to know
its predecessor; a plain transformer must first build that feature with an attention head, which a tiny
model on a tight budget learns slowly (the plain variant stalls on key-value lookup for minutes). With
``token_shift=False`` the model is a plain Llama (ReLU gate, tied embeddings) that exports to HF
``LlamaForCausalLM`` weight-for-weight; the parameter names follow HF's for that reason.

**The KV cache** is an explicit object (``KVCache``): per layer the keys and values of every position seen
so far, ``(B, n_kv_heads, T, head_dim)``, plus the token and the position of each cached entry. Decoding
appends to it; speculative decoding crops it back to the accepted prefix (``crop``) or keeps one accepted
path of a token tree (``select``).

Shapes: tokens (B, T) int64 -> logits (B, T, vocab_size) float32.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KVCache", "TinyLM", "TinyLMConfig"]

NO_TOKEN = -1  # a prev_tokens entry meaning "there is no previous token" (the first token of a text)


@dataclass(frozen=True)
class TinyLMConfig:
    """The architecture. ``n_kv_heads`` divides ``n_heads`` (``n_kv_heads < n_heads``: grouped-query)."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    context: int
    token_shift: bool = True
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "context"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads must divide d_model={self.d_model}, got n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads must divide n_heads={self.n_heads}, got n_kv_heads={self.n_kv_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head_dim = d_model / n_heads must be even for RoPE, got {self.head_dim}")
        if not self.rope_base > 1.0:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TinyLMConfig:
        return cls(**d)

    def model_id(self) -> str:
        """A short hash of the configuration: caches remember it so they are not mixed across models."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------------
# The KV cache
# ------------------------------------------------------------------------------------------------------


class KVCache:
    """Keys and values of every cached position, per layer, for a batch of ``B`` sequences.

    keys[l], values[l]: (B, n_kv_heads, length, head_dim); tokens and positions: (B, length) int64 (the
    token and the RoPE position of each cached entry; ``tokens`` lets ``crop``/``select`` restore
    ``last_tokens``, the previous token that token shift needs for the next new token).

    ``model(tokens, cache=cache)`` appends in place. ``crop(n)`` keeps the first n entries (rejecting a
    draft's tail); ``select(indices)`` keeps the listed entries in order (committing one path of a tree).
    """

    def __init__(self, config: TinyLMConfig, batch_size: int, model_id: str,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model_id = model_id
        self.batch_size = batch_size
        self.n_layers = config.n_layers
        shape = (batch_size, config.n_kv_heads, 0, config.head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.tokens = torch.empty((batch_size, 0), dtype=torch.long, device=device)
        self.positions = torch.empty((batch_size, 0), dtype=torch.long, device=device)

    # -- reading -----------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Number of cached positions."""
        return self.tokens.shape[1]

    @property
    def last_tokens(self) -> torch.Tensor | None:
        """(B,) the token of the last cached entry (None when empty): token shift's previous token."""
        return self.tokens[:, -1] if self.length else None

    def bytes(self) -> int:
        """Bytes held by K and V (all layers); tokens and positions are bookkeeping, not counted."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return (f"KVCache(batch_size={self.batch_size}, length={self.length}, layers={self.n_layers}, "
                f"bytes={self.bytes()}, model_id={self.model_id!r})")

    # -- writing -----------------------------------------------------------------------------------
    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, n_kv_heads, T, head_dim) to ``layer``; return that layer's full K, V."""
        self.keys[layer] = torch.cat([self.keys[layer], k.to(self.keys[layer].dtype)], dim=2)
        self.values[layer] = torch.cat([self.values[layer], v.to(self.values[layer].dtype)], dim=2)
        return self.keys[layer], self.values[layer]

    def _append_tokens(self, tokens: torch.Tensor, positions: torch.Tensor) -> None:
        self.tokens = torch.cat([self.tokens, tokens], dim=1)
        self.positions = torch.cat([self.positions, positions], dim=1)

    def crop(self, n: int) -> KVCache:
        """Keep the first ``n`` cached positions (drop the rest). Returns self."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.length:
            raise ValueError(f"n must be an int in 0..{self.length}, got {n!r}")
        self.keys = [k[:, :, :n] for k in self.keys]
        self.values = [v[:, :, :n] for v in self.values]
        self.tokens = self.tokens[:, :n]
        self.positions = self.positions[:, :n]
        return self

    def select(self, indices: torch.Tensor | list[int]) -> KVCache:
        """Keep the cached entries ``indices`` in that order, drop the rest. Returns self.

        indices: (n,) shared by the batch, or (B, n) one list per row; values in 0..length-1. Typical use:
        ``cache.select(torch.cat([torch.arange(prefix), prefix + accepted_nodes]))`` after a tree step.
        """
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.tokens.device)
        if idx.dim() == 1:
            idx = idx.unsqueeze(0).expand(self.batch_size, -1)
        if idx.dim() != 2 or idx.shape[0] != self.batch_size:
            raise ValueError(f"indices must have shape (n,) or (B={self.batch_size}, n), got {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.length):
            raise ValueError(f"indices must lie in 0..{self.length - 1}, got {idx.min()}..{idx.max()}")
        gather = idx[:, None, :, None].expand(-1, self.keys[0].shape[1], -1, self.keys[0].shape[3])
        self.keys = [k.gather(2, gather) for k in self.keys]
        self.values = [v.gather(2, gather) for v in self.values]
        self.tokens = self.tokens.gather(1, idx)
        self.positions = self.positions.gather(1, idx)
        return self

    def reorder(self, batch_indices: torch.Tensor | list[int]) -> KVCache:
        """Reorder (or duplicate) the batch rows, e.g. for beam search: row i becomes old row batch_indices[i]."""
        idx = torch.as_tensor(batch_indices, dtype=torch.long, device=self.tokens.device)
        if idx.dim() != 1 or (idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.batch_size)):
            raise ValueError(f"batch_indices must be a 1-D list of rows in 0..{self.batch_size - 1}, got {idx}")
        self.keys = [k[idx] for k in self.keys]
        self.values = [v[idx] for v in self.values]
        self.tokens, self.positions = self.tokens[idx], self.positions[idx]
        self.batch_size = idx.numel()
        return self

    def clone(self) -> KVCache:
        """An independent copy (same model_id)."""
        new = object.__new__(KVCache)
        new.model_id, new.batch_size, new.n_layers = self.model_id, self.batch_size, self.n_layers
        new.keys = [k.clone() for k in self.keys]
        new.values = [v.clone() for v in self.values]
        new.tokens, new.positions = self.tokens.clone(), self.positions.clone()
        return new


# ------------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 (as Llama does)."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of RoPE angles for positions (B, T) -> each (B, 1, T, head_dim) (HF Llama's layout)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float()[..., None] * inv_freq  # (B, T, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)  # (B, T, head_dim)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+D/2}) by the position's angle. x: (B, H, T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.kv_transform = None  # see TinyLM.set_kv_transform

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int, backend: str) -> torch.Tensor:
        """x: (B, T, d_model); mask: None (causal, no cache) or (B|1, 1, T, S) bool, True = may attend."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.kv_transform is not None:  # e.g. a low-rank projection of the cache (chapter 2), before RoPE
            k, v = self.kv_transform(layer, k, v)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, Hkv, S, Dh), S = cached + T
        groups = self.n_heads // self.n_kv_heads
        if groups > 1:  # grouped-query: query head h reads K/V head h // groups
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if backend != "torch" and T == 1 and mask is not None and bool(mask.all()):
            from labkit.kernels import attend  # one new query over the whole cache: the decode kernel

            out = attend(q[:, :, 0], k, v, backend=backend)[:, :, None]  # (B, H, 1, Dh)
        elif mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    """W_down (relu(W_gate x) * W_up x): a gated FFN whose ReLU makes most hidden units exactly 0."""

    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.relu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(self, h, cos, sin, mask, cache, layer, backend):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, cache, layer, backend)
        return h + self.mlp(self.post_attention_layernorm(h))


class TinyLM(nn.Module):
    """A Llama-style decoder with an optional token-shift input. See the module docstring.

    ``model(tokens)`` -> logits (B, T, V) float32. With ``cache=``: ``tokens`` are the *new* tokens, their
    positions continue from the last cached position and their K/V are appended to the cache in place.
    ``backend``: "torch" (default) or a ``labkit.kernels`` backend used for single-token decode steps.
    """

    def __init__(self, config: TinyLMConfig) -> None:
        super().__init__()
        if not isinstance(config, TinyLMConfig):
            raise TypeError(f"config must be a TinyLMConfig, got {type(config).__name__}")
        self.config = config
        self.model_id = config.model_id()
        self.backend = "torch"
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_prev = nn.Embedding(config.vocab_size, config.d_model) if config.token_shift else None
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied input/output embedding
        self._init_weights()

    def _init_weights(self) -> None:
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # residual writes (o_proj, down_proj) scaled down by depth, as in GPT-2
                residual = name.endswith(("o_proj.weight", "down_proj.weight"))
                scale = (2 * self.config.n_layers) ** -0.5 if residual else 1.0
                nn.init.normal_(p, std=std * scale)

    def num_parameters(self) -> int:
        """Number of distinct parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def set_kv_transform(self, transform=None) -> None:
        """Route every layer's new keys and values through ``transform(layer, k, v) -> (k, v)`` before RoPE
        and before they enter the cache (k, v: (B, n_kv_heads, T, head_dim)); None removes it.

        Chapter 2's feature-axis compressors use it: a fixed basis must act on keys *before* the rotation,
        which mixes dimensions differently at every position.
        """
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable (layer, k, v) -> (k, v) or None, "
                            f"got {type(transform).__name__}")
        for block in self.layers:
            block.self_attn.kv_transform = transform

    def new_cache(self, batch_size: int = 1) -> KVCache:
        """An empty KV cache for this model, on the model's device and dtype."""
        p = self.embed_tokens.weight
        return KVCache(self.config, batch_size, self.model_id, dtype=p.dtype, device=p.device)

    def embed(self, tokens: torch.Tensor, prev_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The input embedding with token shift: ``E[x_t] + E_prev[x_{t-1}]`` -> (B, T, d_model).

        tokens: (B, T) ids; prev_tokens: (B, T) the previous token of each (-1 = none; default: tokens
        shifted right, the first one without a previous token). Without token shift it is ``E[x_t]``.
        """
        h = self.embed_tokens(tokens)
        if self.embed_prev is not None:
            if prev_tokens is None:
                none = torch.full_like(tokens[:, :1], NO_TOKEN)
                prev_tokens = torch.cat([none, tokens[:, :-1]], dim=1)
            has_prev = (prev_tokens >= 0).unsqueeze(-1)
            h = h + self.embed_prev(prev_tokens.clamp(min=0)) * has_prev
        return h

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        tree_mask: torch.Tensor | None = None,
        prev_tokens: torch.Tensor | None = None,
        embeds: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of the next token after each of ``tokens``.

        tokens: (B, T) integer ids in 0..vocab_size-1 (the new tokens when a cache is given).
        cache: a ``KVCache`` from ``new_cache``; appended to in place.
        positions: (B, T) RoPE positions (trees: depth-based), default: continuing from the last cached
            position (``cache.positions[:, -1] + 1 + arange(T)``; equal to cache.length unless entries were
            evicted), or arange(T) without a cache.
        tree_mask: (T, T) bool, [i, j] = new token i may attend to new token j (ancestor-or-self);
            new tokens always attend to every cached position. Default: causal.
        prev_tokens: (B, T) the previous token of each new token for token shift (trees: the parent's
            token; -1 = none). Default: tokens shifted right, the first one from ``cache.last_tokens``.
        embeds: (B, T, d_model) input vectors used instead of ``embed(tokens, prev_tokens)`` (e.g. trained
            prompt tokens); ``tokens`` still name the entries the cache records.
        return_hidden: also return the hidden states after the final norm, (B, T, d_model).
        Returns logits (B, T, vocab_size) float32, or ``(logits, hidden)`` with ``return_hidden``.
        """
        tokens, positions, tree_mask, prev_tokens = self._check(tokens, cache, positions, tree_mask, prev_tokens)
        B, T = tokens.shape
        cached = cache.length if cache is not None else 0

        if embeds is None:
            h = self.embed(tokens, prev_tokens)
        else:
            if not isinstance(embeds, torch.Tensor) or embeds.shape != (B, T, self.config.d_model):
                got = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
                raise ValueError(f"embeds must have shape {(B, T, self.config.d_model)}, got {got}")
            h = embeds.to(self.embed_tokens.weight.dtype)

        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_base)
        if cached == 0 and tree_mask is None:
            mask = None  # plain causal attention
        else:
            new = tree_mask if tree_mask is not None else torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
            old = torch.ones(T, cached, dtype=torch.bool, device=h.device)
            mask = torch.cat([old, new.to(h.device)], dim=1)[None, None]  # (1, 1, T, cached + T)

        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, mask, cache, i, self.backend)
        if cache is not None:
            cache._append_tokens(tokens, positions)
        hidden = self.norm(h)
        logits = self.lm_head(hidden).float()
        return (logits, hidden) if return_hidden else logits

    # -- input checks --------------------------------------------------------------------------------
    def _check(self, tokens, cache, positions, tree_mask, prev_tokens):
        cfg = self.config
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of int64 ids, got {type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"tokens must hold integer ids (int64), got {tokens.dtype}")
        if tokens.dim() != 2 or tokens.shape[1] == 0:
            raise ValueError(f"tokens must have shape (B, T) with T >= 1, got {tuple(tokens.shape)}")
        tokens = tokens.long()
        if int(tokens.min()) < 0 or int(tokens.max()) >= cfg.vocab_size:
            raise ValueError(f"tokens must be ids in 0..{cfg.vocab_size - 1}, "
                             f"got {int(tokens.min())}..{int(tokens.max())}")
        B, T = tokens.shape
        cached = 0
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be a KVCache (model.new_cache()), got {type(cache).__name__}")
            if cache.model_id != self.model_id:
                raise ValueError(f"cache belongs to another model (model_id {cache.model_id!r}), "
                                 f"expected {self.model_id!r}: make it with this model's new_cache()")
            if cache.batch_size != B:
                raise ValueError(f"cache holds batch_size={cache.batch_size} rows, tokens have B={B}")
            cached = cache.length
        if positions is None:
            # continue from the last cached position (not cache.length: they differ once entries are evicted)
            start = cache.positions[:, -1:] + 1 if cached else torch.zeros(B, 1, dtype=torch.long)
            start = start.to(tokens.device)
            positions = start + torch.arange(T, device=tokens.device)
            nxt = int(start.max()) if B else 0
            if nxt + T > cfg.context:
                raise ValueError(f"tokens: {T} new positions from position {nxt} exceed the context of "
                                 f"{cfg.context} ({cached} cached)")
        else:
            if not isinstance(positions, torch.Tensor) or positions.is_floating_point():
                raise TypeError("positions must be an integer torch.Tensor (B, T)")
            positions = positions.long().to(tokens.device)
            if positions.dim() == 1:
                positions = positions.expand(B, T)
            if positions.shape != (B, T):
                raise ValueError(f"positions must have shape {(B, T)}, got {tuple(positions.shape)}")
            if int(positions.min()) < 0 or int(positions.max()) >= cfg.context:
                raise ValueError(f"tokens: positions must lie in 0..{cfg.context - 1} (the context), "
                                 f"got {int(positions.min())}..{int(positions.max())}")
        if tree_mask is not None:
            if not isinstance(tree_mask, torch.Tensor) or tree_mask.dtype != torch.bool:
                raise TypeError("tree_mask must be a bool torch.Tensor (T, T)")
            if tree_mask.shape != (T, T):
                raise ValueError(f"tree_mask must have shape {(T, T)}, got {tuple(tree_mask.shape)}")
            if not bool(tree_mask.diagonal().all()):
                raise ValueError("tree_mask must let every token attend to itself (diagonal all True)")
        if prev_tokens is None:
            first = cache.last_tokens if cache is not None and cache.length else None
            if first is None:
                first = torch.full((B,), NO_TOKEN, dtype=torch.long, device=tokens.device)
            prev_tokens = torch.cat([first[:, None].to(tokens.device), tokens[:, :-1]], dim=1)
        else:
            if not isinstance(prev_tokens, torch.Tensor) or prev_tokens.is_floating_point():
                raise TypeError("prev_tokens must be an integer torch.Tensor (B, T)")
            prev_tokens = prev_tokens.long().to(tokens.device)
            if prev_tokens.shape != (B, T):
                raise ValueError(f"prev_tokens must have shape {(B, T)}, got {tuple(prev_tokens.shape)}")
            if int(prev_tokens.max()) >= cfg.vocab_size or int(prev_tokens.min()) < NO_TOKEN:
                raise ValueError(f"prev_tokens must be ids in 0..{cfg.vocab_size - 1} or -1 (none)")
        return tokens, positions, tree_mask, prev_tokens

    # -- convenience ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, tokens: list[int] | torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0) -> list[int]:
        """Greedy (temperature 0) or sampled continuation of one prompt with a KV cache. Returns new ids."""
        prompt = torch.as_tensor(tokens, dtype=torch.long).reshape(1, -1).to(self.embed_tokens.weight.device)
        room = self.config.context - prompt.shape[1]
        if max_new_tokens > room:
            raise ValueError(f"max_new_tokens must be <= {room} (context {self.config.context} - prompt), "
                             f"got {max_new_tokens}")
        g = torch.Generator(device="cpu").manual_seed(seed)
        cache = self.new_cache(1)
        logits = self(prompt, cache=cache)[:, -1]
        out: list[int] = []
        for i in range(max_new_tokens):
            if temperature <= 0:
                nxt = int(logits.argmax(-1))
            else:
                probs = torch.softmax(logits.cpu() / temperature, dim=-1)
                nxt = int(torch.multinomial(probs, 1, generator=g))
            out.append(nxt)
            if i + 1 < max_new_tokens:
                logits = self(torch.tensor([[nxt]], device=prompt.device), cache=cache)[:, -1]
        return out
