"""Terminal safety and names: what text may reach a screen, and what a name may be.

Strategy
--------
Chat text comes from strangers and ends up on terminals, where a raw ``ESC [ 2 J``
clears the screen, a ``\\r`` or ``\\n`` forges a line that seems to come from someone
else, and a bidi override (U+202E) reverses what follows. :func:`sanitize_text`
removes every such character while keeping all printable Unicode (Cyrillic, CJK,
emoji with their zero-width joiners) intact. It also removes what hides or
disguises text without moving the cursor: Unicode TAG characters (invisible ASCII),
floods of combining marks (one letter with thousands of accents), and runs of
blanks (a message padded with spaces until the terminal wraps it into what looks
like a line of its own). The server applies it on the way in, and clients apply it
again on the way out, since they must not trust a server either.

Names are what people trust most, so they are held to more: :func:`name_problem`
admits letters, digits, combining marks and ``_ - .`` only, nothing invisible, and
no reserved name (:data:`RESERVED_NAMES`). Uniqueness is decided by
:func:`name_keys` alone: two names clash when they are the same after Unicode
compatibility normalisation and case folding, or when they look alike by the
confusable *skeleton* of Unicode Technical Standard #39 (Cyrillic ``аlice`` and
``alice``, ``aIice`` with a capital I and ``alice``). :class:`NameIndex` applies
that rule to a table of names, so a hub never compares names itself.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator, ValuesView
from typing import Any, Generic, NamedTuple, TypeVar

from .limits import MAX_NAME_CHARS

# --- terminal safety -------------------------------------------------------------------

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

#: Unicode TAG characters: invisible, and able to spell any ASCII text.
_TAGS = "\U000e0000-\U000e007f"

# Whitespace controls become a space (the words stay apart); every other C0/C1
# control, DEL, bidi control, lone surrogate and TAG character is dropped.
_TRANSLATION: dict[int, str | None] = {c: None for c in range(0x20)}
_TRANSLATION.update({c: None for c in range(0x7F, 0xA0)})
_TRANSLATION.update({ord(c): " " for c in "\t\n\r\x0b\x0c\u2028\u2029\x85"})
_TRANSLATION.update({ord(c): None for c in _BIDI_CONTROLS})
_TRANSLATION.update({c: None for c in range(0xD800, 0xE000)})

# What looks like a space: Unicode's space separators (Zs), the braille blank and the
# Hangul fillers (letters that draw nothing).
_BLANKS = "\x20\xa0\u1680\u2000-\u200a\u202f\u205f\u3000\u2800\u115f\u1160\u3164\uffa0"
# Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties.txt): characters that
# draw nothing at all. Zero-width joiners and variation selectors among them are part
# of emoji, so text keeps them; names may not contain any.
_DEFAULT_IGNORABLE = (
    "\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)
_IS_DEFAULT_IGNORABLE = re.compile(f"[{_DEFAULT_IGNORABLE}]")
# The same without the TAG block: TAG characters are removed on their own (below).
_INVISIBLE = _DEFAULT_IGNORABLE.replace("\U000e0000-", "\U000e0080-")
# A run of blanks, with any invisible characters inside or around it, shows as one
# gap however long it is: it becomes one space.
_BLANK_RUN = re.compile(f"[{_INVISIBLE}]*[{_BLANKS}](?:[{_BLANKS}]|[{_INVISIBLE}])*")
# The subdivision flags of England, Scotland and Wales are the only TAG sequences in
# use (U+1F3F4 WAVING BLACK FLAG, tag letters, CANCEL TAG); every other TAG goes.
_FLAG = "\U0001f3f4"
_FLAG_TAGS = frozenset(
    "".join(chr(0xE0000 + ord(c)) for c in region) + "\U000e007f"
    for region in ("gbeng", "gbsct", "gbwls")
)
_TAG_RUN = re.compile(f"[{_TAGS}]+")

#: Most combining marks kept on one base character. Every real script needs far
#: fewer (Tibetan stacks and pointed Hebrew use four or five; Unicode's stream-safe
#: format allows 30); a "zalgo" flood of thousands is cut here.
MAX_MARKS_PER_CHARACTER = 8

# Anything that sanitize_text may change. Plain ASCII text without controls or double
# spaces (most chat) and ordinary non-ASCII text fail to match, and are returned as is.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029"
    f"\ud800-\udfff{_TAGS}\xa0\u1680\u2000-\u200a\u202f\u205f\u3000\u2800\u115f\u1160"
    "\u3164\uffa0]|  "
    f"|[{_INVISIBLE}] | [{_INVISIBLE}]"
)
_UNSAFE_ASCII = re.compile("[\x00-\x1f\x7f]")
_MARK_CATEGORIES = frozenset({"Mn", "Me"})


def _cap_marks(text: str) -> str:
    """``text`` with at most :data:`MAX_MARKS_PER_CHARACTER` marks on each base."""
    kept: list[str] = []
    run = 0
    dropped = False
    category = unicodedata.category
    for char in text:
        kind = category(char)
        if kind in _MARK_CATEGORIES:
            run += 1
            if run > MAX_MARKS_PER_CHARACTER:
                dropped = True
                continue
        elif kind != "Cf":  # a zero-width joiner between marks starts no new base
            run = 0
        kept.append(char)
    return "".join(kept) if dropped else text


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


@functools.cache
def _mark_run_in_bmp() -> re.Pattern[str]:
    """Nine or more marks or format characters in a row, in the BMP (built on first use).

    A quick, exact pre-filter for :func:`_has_mark_flood`: a flood is such a run.
    Only the BMP, because ``re`` tests characters beyond it against each range in
    turn, which would make the check slower than the loop it saves.
    """
    ranges: list[list[int]] = []
    for code in range(0x10000):
        if unicodedata.category(chr(code)) in ("Mn", "Me", "Cf"):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    members = "".join(f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in ranges)
    return re.compile(f"[{members}]{{{MAX_MARKS_PER_CHARACTER + 1},}}")


def _has_mark_flood(text: str) -> bool:
    if _ASTRAL.search(text) is None and _mark_run_in_bmp().search(text) is None:
        return False
    run = 0
    category = unicodedata.category
    for char in text:
        kind = category(char)
        if kind in _MARK_CATEGORIES:
            run += 1
            if run > MAX_MARKS_PER_CHARACTER:
                return True
        elif kind != "Cf":
            run = 0
    return False


def _keep_flag_tags(match: re.Match[str]) -> str:
    start = match.start()
    if match.group() in _FLAG_TAGS and start > 0 and match.string[start - 1] == _FLAG:
        return match.group()
    return ""


def sanitize_text(text: str, *, keep_blanks: bool = False) -> str:
    """Return ``text`` safe and honest to show on a terminal.

    Removes escape sequences, control characters, bidi controls, lone surrogates and
    TAG characters (the flags of England, Scotland and Wales keep theirs); turns
    every run of blanks (line breaks, tabs, spaces of any width, blank-looking
    letters, and invisible characters among them) into one space; keeps at most
    :data:`MAX_MARKS_PER_CHARACTER` combining marks on one character. Letters,
    digits, punctuation and emoji of every script are kept as they are.
    Idempotent: ``sanitize_text(sanitize_text(s)) == sanitize_text(s)``.

    Args:
        text: anything.
        keep_blanks: leave runs of blanks as they are (line breaks still become
            spaces). Only for text the server itself wrote, such as the aligned
            columns of ``/help``: never for anything a user sent.
    """
    if text.isascii():
        if "  " not in text and _UNSAFE_ASCII.search(text) is None:
            return text  # the common case: nothing to do, no copy
    elif _UNSAFE.search(text) is None and not _has_mark_flood(text):
        return text
    if _ESCAPE_START.search(text) is not None:
        text = _ESCAPE_SEQUENCE.sub("", text)
    text = text.translate(_TRANSLATION)
    if not text.isascii():
        text = _TAG_RUN.sub(_keep_flag_tags, text)
    if not keep_blanks:
        text = _BLANK_RUN.sub(" ", text)
    if not text.isascii():
        text = _cap_marks(text)
    return text


def quote_input(text: str, limit: int = 32) -> str:
    """``text`` from a user, quoted for an error message, in bounded size.

    At most ``limit`` characters of the sanitised text are shown (then ``…``), and
    invisible characters are spelt out (``'bob\\u200b'``) so the reader sees why the
    name did not match. The result is never longer than ``10 * limit + 3``
    characters, however ``text`` expands when escaped.
    """
    clean = sanitize_text(text[: 4 * limit])  # escapes shrink when removed, never grow
    shown = clean[:limit]
    spelt = "".join(
        char if char.isprintable() and not _IS_DEFAULT_IGNORABLE.match(char) else _escape(char)
        for char in shown
    )
    return f"'{spelt}'" + ("…" if len(clean) > limit or len(text) > 4 * limit else "")


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


# --- confusable skeletons (Unicode Technical Standard #39) -----------------------------


@functools.cache
def _prototypes() -> dict[str, str]:
    """Each confusable character's prototype, from Unicode's ``confusables.txt``.

    The data comes from the ``confusable_homoglyphs`` package, which ships the
    official file as a symmetric map: every line ``source ; prototype`` puts each in
    the other's list (and wraps right-to-left characters in U+200E for display). In
    confusables.txt a source is one code point and never a prototype, so:

    * a character listed with a longer string (``m`` with ``rn``) is a source, and
      that string is its prototype;
    * the other characters form stars, one prototype with its sources around it; the
      centre is the one with most neighbours. For a lone pair either one can stand
      for both (only equality of skeletons is ever used, never their text), except a
      composed character, which must be the prototype.

    Checked against the official file: the classes agree for every character that
    may appear in a name. Loaded on first use (~40 ms), not at import, so commands
    that never compare names start fast.
    """
    from confusable_homoglyphs.confusables import confusables_data

    data: dict[str, list[dict[str, str]]] = confusables_data
    unmark = str.maketrans("", "", "\u200e\u200f")
    near: dict[str, set[str]] = {}
    for key, entries in data.items():
        near.setdefault(key.translate(unmark), set()).update(
            entry["c"].translate(unmark) for entry in entries
        )
    prototype: dict[str, str] = {}
    stars: dict[str, set[str]] = {}
    for char, others in near.items():
        if len(char) != 1:
            continue
        longer = sorted(other for other in others if len(other) > 1)
        if longer:
            prototype[char] = longer[0]
        else:
            stars[char] = {other for other in others if len(other) == 1}
    for char, others in stars.items():
        centre = max(
            [char, *others], key=lambda c: (len(stars.get(c, ())), _decomposes(c), -ord(c))
        )
        if centre != char:
            prototype[char] = centre
    # A longer prototype is written in prototypes, but a lone pair's stand-in may be
    # the other member: map its characters too, so every path gives one skeleton.
    for char, target in prototype.items():
        if len(target) > 1:
            prototype[char] = "".join(prototype.get(c, c) for c in target)
    return prototype


def _decomposes(char: str) -> bool:
    # Input is decomposed (NFD) before prototypes are looked up, so a composed
    # character never matches there: in a lone pair it must be the one stood for.
    return unicodedata.normalize("NFD", char) != char


def skeleton(text: str) -> str:
    """The confusable skeleton of ``text`` (UTS #39 §4): equal skeletons look alike.

    NFD, drop default-ignorable characters, replace each character by its
    prototype, NFD again.
    """
    prototype = _prototypes()
    decomposed = unicodedata.normalize("NFD", _IS_DEFAULT_IGNORABLE.sub("", text))
    return unicodedata.normalize("NFD", "".join(prototype.get(c, c) for c in decomposed))


# --- names -----------------------------------------------------------------------------

#: Names nobody may take, because people read them as the system speaking: a user
#: called ``server`` or ``admin`` could tell others to run a command or hand over a
#: password. Anything that clashes with one (``Server``, ``ѕerver`` in Cyrillic,
#: ``adm1n``) is refused too.
RESERVED_NAMES = (
    "admin",
    "administrator",
    "moderator",
    "netchat",
    "nobody",
    "operator",
    "root",
    "server",
    "staff",
    "support",
    "sysop",
    "system",
)

#: Most combining marks on one letter of a name (Devanagari, Thai and Vietnamese
#: need two or three).
MAX_NAME_MARKS = 4

_WORD = re.compile(r"[\w]")
_NAME_PUNCTUATION = "_-."
_NAME_MARKS = frozenset({"Mn", "Mc"})
# Longest input whose NFC form can still be a name (composition joins at most four
# code points into one); longer input is cut before any costly normalisation.
_LONGEST_NAME_INPUT = 4 * MAX_NAME_CHARS


class NameKeys(NamedTuple):
    """The two keys under which names are unique (see :func:`name_keys`)."""

    #: Skeleton of the case-folded name: ``Alice``, ``ALICE`` and Cyrillic ``аlice``.
    fold: str
    #: Skeleton of the name as written: ``aIice`` (capital I) and ``alice``.
    shape: str


def normalize_name(name: str) -> str:
    """``name`` as it is stored: surrounding whitespace removed, composed (NFC).

    ``Jose`` followed by U+0301 COMBINING ACUTE ACCENT becomes ``José``.
    """
    return unicodedata.normalize("NFC", name[: _LONGEST_NAME_INPUT + 8].strip())


@functools.lru_cache(maxsize=4096)
def _keys(name: str) -> NameKeys:
    compatible = unicodedata.normalize("NFKC", name)
    return NameKeys(skeleton(compatible.casefold()), skeleton(compatible))


def name_keys(name: str) -> NameKeys:
    """The keys that decide whether two names are one (the only place that decides).

    Two names clash when either key is equal (:func:`names_clash`). Case folding and
    skeletons are both needed because neither implies the other: ``ALICE`` and
    ``alice`` differ in skeleton (the capital I looks like an l), ``aIice`` and
    ``alice`` differ once case-folded (to ``aiice``). A single key merging both
    would chain unrelated letters together through Greek and Cyrillic capitals
    (Greek ``Ν`` is ``N`` but its small ``ν`` looks like ``v``), so the clash
    relation keeps two.
    """
    return _keys(name[: _LONGEST_NAME_INPUT + 1])


def names_clash(a: str, b: str) -> bool:
    """True when names ``a`` and ``b`` count as the same name."""
    key_a, key_b = name_keys(a), name_keys(b)
    return key_a.fold == key_b.fold or key_a.shape == key_b.shape


def name_key(name: str) -> str:
    """One name's identity for lookups: ``Alice``, ``ALICE`` and ``аlice`` give one key.

    Use :func:`names_clash` or :class:`NameIndex` to decide whether a name is free.
    """
    return name_keys(name).fold


@functools.cache
def _reserved() -> NameIndex[str]:
    index: NameIndex[str] = NameIndex()
    for name in RESERVED_NAMES:
        index[name] = name
    return index


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid user name, or ``None`` if it is.

    A name is 1 to :data:`MAX_NAME_CHARS` letters or digits of any script (with
    their combining marks), ``_``, ``-`` or ``.``, starting with a letter, digit or
    ``_``; it contains nothing invisible and is not (or does not look like) one of
    :data:`RESERVED_NAMES`. It is checked in its composed form (NFC), as
    :func:`normalize_name` stores it.
    """
    if len(name) > _LONGEST_NAME_INPUT:
        return f"a name has at most {MAX_NAME_CHARS} characters"
    name = unicodedata.normalize("NFC", name)
    if not name:
        return "a name cannot be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"a name has at most {MAX_NAME_CHARS} characters"
    if _IS_DEFAULT_IGNORABLE.search(name) is not None:
        return "a name cannot contain invisible characters"
    marks = 0
    for char in name:
        if unicodedata.category(char) in _NAME_MARKS:
            marks += 1
            if marks > MAX_NAME_MARKS:
                return f"a name has at most {MAX_NAME_MARKS} accents on one letter"
        elif _WORD.match(char) or char in _NAME_PUNCTUATION:
            marks = 0
        else:
            return "a name may contain only letters, digits, '_', '-' and '.'"
    if name[0] in "-." or unicodedata.category(name[0]) in _NAME_MARKS:
        return "a name must start with a letter, a digit or '_'"
    reserved = _reserved().clash(name)
    if reserved is not None:
        return f"the name {reserved!r} is reserved"
    return None


def repair_name(name: str) -> str:
    """A name as close to ``name`` as the rules allow (for suggestions).

    Invisible characters are dropped, any other character a name may not hold
    becomes ``_``; the result may still be taken or reserved.
    """
    text = sanitize_text(normalize_name(name))
    text = _IS_DEFAULT_IGNORABLE.sub("", text)
    kept: list[str] = []
    marks = 0
    for char in text:
        if unicodedata.category(char) in _NAME_MARKS:
            marks += 1
            if marks <= MAX_NAME_MARKS and kept:
                kept.append(char)
        elif _WORD.match(char) or char in _NAME_PUNCTUATION:
            marks = 0
            kept.append(char)
        else:
            marks = 0
            kept.append("_")
    cleaned = "".join(kept).lstrip("-.")[:MAX_NAME_CHARS]
    return cleaned if cleaned.strip("_") else "guest"


def name_candidates(name: str) -> Iterator[str]:
    """Valid names to offer instead of ``name``, best first.

    The repaired name itself when ``name`` was invalid (``al ice`` → ``al_ice``),
    then numbered ones (``alice2``, ``alice3``, …, ``alice9999``). The caller skips
    those that are taken.
    """
    base = repair_name(name)
    if base != name and name_problem(base) is None:
        yield base
    for n in range(2, 10_000):
        suffix = str(n)
        candidate = base[: MAX_NAME_CHARS - len(suffix)] + suffix
        if name_problem(candidate) is None:
            yield candidate


V = TypeVar("V")


class NameIndex(Generic[V]):
    """Values by user name, where names that clash (:func:`names_clash`) are one.

    A hub's member table: ``index[name] = member`` adds (the caller has checked
    that ``name`` is free), ``name in index`` asks whether a name is taken,
    ``index.get(name)`` finds who holds it. Iteration follows insertion order, like
    a dict; :meth:`values` is a live view, cheap enough for a broadcast loop.
    """

    def __init__(self) -> None:
        self._values: dict[str, V] = {}  # fold key -> value, in insertion order
        self._names: dict[str, str] = {}  # fold key -> the name as added
        self._shapes: dict[str, str] = {}  # shape key -> fold key

    def _find(self, name: str) -> str | None:
        keys = name_keys(name)
        if keys.fold in self._values:
            return keys.fold
        return self._shapes.get(keys.shape)

    def clash(self, name: str, ignoring: Any = None) -> V | None:
        """The value whose name clashes with ``name`` (other than ``ignoring``), if any."""
        keys = name_keys(name)
        for fold in (keys.fold, self._shapes.get(keys.shape)):
            if fold is not None and fold in self._values:
                value = self._values[fold]
                if value is not ignoring:
                    return value
        return None

    def get(self, name: str) -> V | None:
        """The value of the name that clashes with ``name``; the same name first."""
        fold = self._find(name)
        return None if fold is None else self._values[fold]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def __setitem__(self, name: str, value: V) -> None:
        """Add ``name`` (or replace the value of that very name).

        Raises:
            KeyError: ``name`` clashes with another name in the index.
        """
        keys = name_keys(name)
        owner = self._shapes.get(keys.shape)
        if owner is not None and owner != keys.fold:
            raise KeyError(f"{name!r} clashes with {self._names[owner]!r}")
        if keys.fold in self._values:
            del self[self._names[keys.fold]]
        self._values[keys.fold] = value
        self._names[keys.fold] = name
        self._shapes[keys.shape] = keys.fold

    def __delitem__(self, name: str) -> None:
        """Remove the name that clashes with ``name``.

        Raises:
            KeyError: no name in the index clashes with ``name``.
        """
        fold = self._find(name)
        if fold is None:
            raise KeyError(name)
        del self._values[fold]
        del self._shapes[name_keys(self._names.pop(fold)).shape]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[str]:
        """The names, in insertion order."""
        return iter(list(self._names.values()))

    def values(self) -> ValuesView[V]:
        return self._values.values()

    def clear(self) -> None:
        self._values.clear()
        self._names.clear()
        self._shapes.clear()
