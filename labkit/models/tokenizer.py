"""TinyLM's tokenizer: UTF-8 bytes for English, plus single tokens for the structured tasks.

=========  =================  ==========================================================
ids        text form          meaning
=========  =================  ==========================================================
0..255     the bytes           English (and any text), one token per UTF-8 byte
256        ``<sep>``           SEP: ends the stored part of an episode; the query follows
257        ``<doc>``           DOC: begins every structured episode (packed rows hold several)
258        ``<copy>``          COPY: marks a copying episode
259..322   ``<k0>``..``<k63>`` KEY_TOKENS: keys of a lookup, variables of a trace
323..386   ``<v0>``..``<v63>`` VALUE_TOKENS: values
=========  =================  ==========================================================

Episode formats (built by ``labkit.data.corpus``; the answer tokens are the only loss targets):

- lookup (n pairs):  ``<doc> k1 v1 k2 v2 … kn vn <sep> kq`` → answer ``vq``
- trace:             ``<doc> a v3  b a  c b … <sep> c`` → answer ``v3`` (``b a`` means "b = a")
- copy:              ``<doc> <copy> v5 v1 v9 <sep>`` → answer ``v5 v1 v9``

``encode`` turns the text forms above into their single tokens and everything else into bytes, so
``decode(encode(s)) == s`` for every string.
"""

from __future__ import annotations

import re

__all__ = [
    "COPY", "DOC", "KEY_TOKENS", "N_KEYS", "N_VALUES", "SEP", "SPECIAL_NAMES", "VALUE_TOKENS", "VOCAB_SIZE",
    "decode", "encode", "is_key", "is_value", "key", "token_name", "value",
]

N_BYTES = 256
SEP = 256
DOC = 257
COPY = 258
N_KEYS = 64
N_VALUES = 64
KEY_TOKENS: tuple[int, ...] = tuple(range(259, 259 + N_KEYS))
VALUE_TOKENS: tuple[int, ...] = tuple(range(KEY_TOKENS[-1] + 1, KEY_TOKENS[-1] + 1 + N_VALUES))
VOCAB_SIZE = VALUE_TOKENS[-1] + 1  # 387

SPECIAL_NAMES: dict[int, str] = {SEP: "<sep>", DOC: "<doc>", COPY: "<copy>"}
SPECIAL_NAMES.update({t: f"<k{i}>" for i, t in enumerate(KEY_TOKENS)})
SPECIAL_NAMES.update({t: f"<v{i}>" for i, t in enumerate(VALUE_TOKENS)})
_BY_NAME = {name: t for t, name in SPECIAL_NAMES.items()}
_SPECIAL_RE = re.compile(r"<(?:sep|doc|copy|k\d{1,2}|v\d{1,2})>")


def key(i: int) -> int:
    """The token of key ``i`` (0..N_KEYS-1)."""
    if not 0 <= i < N_KEYS:
        raise ValueError(f"key index must be in 0..{N_KEYS - 1}, got {i}")
    return KEY_TOKENS[i]


def value(i: int) -> int:
    """The token of value ``i`` (0..N_VALUES-1)."""
    if not 0 <= i < N_VALUES:
        raise ValueError(f"value index must be in 0..{N_VALUES - 1}, got {i}")
    return VALUE_TOKENS[i]


def is_key(token: int) -> bool:
    return KEY_TOKENS[0] <= token <= KEY_TOKENS[-1]


def is_value(token: int) -> bool:
    return VALUE_TOKENS[0] <= token <= VALUE_TOKENS[-1]


def encode(text: str) -> list[int]:
    """Text -> token ids: ``<sep>``, ``<doc>``, ``<copy>``, ``<kI>``, ``<vI>`` become single tokens, the
    rest UTF-8 bytes."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    ids: list[int] = []
    pos = 0
    for m in _SPECIAL_RE.finditer(text):
        token = _BY_NAME.get(m.group())
        if token is None:  # e.g. "<k99>": not a token, stays bytes
            continue
        ids.extend(text[pos:m.start()].encode("utf-8"))
        ids.append(token)
        pos = m.end()
    ids.extend(text[pos:].encode("utf-8"))
    return ids


def token_name(token: int) -> str:
    """One token as text: a special's name, or a byte as a character (``\\xNN`` when not printable ASCII)."""
    if token in SPECIAL_NAMES:
        return SPECIAL_NAMES[token]
    if 0 <= token < N_BYTES:
        ch = chr(token)
        return ch if 32 <= token < 127 or ch in "\n\t" else f"\\x{token:02x}"
    raise ValueError(f"token must be an id in 0..{VOCAB_SIZE - 1}, got {token}")


def decode(ids: list[int]) -> str:
    """Token ids -> text (specials by their names; invalid UTF-8 becomes U+FFFD)."""
    parts: list[str] = []
    run = bytearray()
    for t in ids:
        t = int(t)
        if 0 <= t < N_BYTES:
            run.append(t)
            continue
        if t not in SPECIAL_NAMES:
            raise ValueError(f"ids must be tokens in 0..{VOCAB_SIZE - 1}, got {t}")
        parts.append(run.decode("utf-8", errors="replace"))
        run.clear()
        parts.append(SPECIAL_NAMES[t])
    parts.append(run.decode("utf-8", errors="replace"))
    return "".join(parts)
