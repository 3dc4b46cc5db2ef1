"""Terminal safety and names: what text may reach a screen, and what a name may be.

Strategy
--------
Chat text comes from strangers and ends up on terminals, where a raw ``ESC [ 2 J``
clears the screen, a ``\\r`` or ``\\n`` forges a line that seems to come from someone
else, and a bidi override (U+202E) reverses what follows. :func:`sanitize_text`
removes every such character while keeping all printable Unicode (Cyrillic, CJK,
emoji with their zero-width joiners) intact: the server applies it on the way in, and
clients apply it again on the way out, since they must not trust a server either.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from .limits import MAX_NAME_CHARS

# A whole escape sequence, not only its ESC byte, so no "[2J" litter is left behind:
# CSI (ESC [ or the 8-bit 0x9B) ... final byte; OSC/DCS/SOS/PM/APC strings up to their
# terminator (BEL or ST); and other ESC sequences (ESC, intermediates, final: "ESC ( B").
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]P^_X]|[\x90\x9d\x9e\x9f\x98])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)

_ESCAPE_START = re.compile("[\x1b\x9b\x90\x9d\x9e\x9f\x98]")

_BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"

# Whitespace controls become a space (the words stay apart); every other C0/C1
# control, DEL, bidi control and lone surrogate is dropped.
_TRANSLATION: dict[int, str | None] = {c: None for c in range(0x20)}
_TRANSLATION.update({c: None for c in range(0x7F, 0xA0)})
_TRANSLATION.update({ord(c): " " for c in "\t\n\r\x0b\x0c\u2028\u2029\x85"})
_TRANSLATION.update({ord(c): None for c in _BIDI_CONTROLS})
_TRANSLATION.update({c: None for c in range(0xD800, 0xE000)})

_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]"
)


def sanitize_text(text: str) -> str:
    """Return ``text`` with escape sequences and control characters removed.

    Printable characters of every script are kept; tabs and line breaks become spaces.
    Idempotent: ``sanitize_text(sanitize_text(s)) == sanitize_text(s)``.
    """
    if _UNSAFE.search(text) is None:  # the common case: nothing to do, no copy
        return text
    if _ESCAPE_START.search(text) is not None:
        text = _ESCAPE_SEQUENCE.sub("", text)
    return text.translate(_TRANSLATION)


def is_safe_text(text: str) -> bool:
    """True when ``text`` holds nothing :func:`sanitize_text` would change."""
    return _UNSAFE.search(text) is None


_NAME_CHARS = re.compile(r"[\w.\-]+")


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid user name, or ``None`` if it is.

    A name is 1 to :data:`MAX_NAME_CHARS` letters or digits of any script, ``_``,
    ``-`` or ``.``, starting with a letter, digit or ``_``.
    """
    if not name:
        return "a name cannot be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"a name has at most {MAX_NAME_CHARS} characters"
    if _NAME_CHARS.fullmatch(name) is None:
        return "a name may contain only letters, digits, '_', '-' and '.'"
    if name[0] in "-.":
        return "a name cannot start with '-' or '.'"
    return None


def name_key(name: str) -> str:
    """The key under which names are unique: ``Alice`` and ``alice`` are one name."""
    return unicodedata.normalize("NFKC", name).casefold()


def repair_name(name: str) -> str:
    """A valid name as close to ``name`` as possible (for suggestions)."""
    cleaned = "".join(c if _NAME_CHARS.fullmatch(c) else "_" for c in sanitize_text(name).strip())
    cleaned = cleaned.lstrip("-.")[:MAX_NAME_CHARS]
    return cleaned or "guest"


def name_candidates(name: str) -> Iterator[str]:
    """``name2``, ``name3``, … — alternatives to offer when ``name`` is taken."""
    base = repair_name(name)
    for n in range(2, 10_000):
        suffix = str(n)
        yield base[: MAX_NAME_CHARS - len(suffix)] + suffix
