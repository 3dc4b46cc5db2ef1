"""Terminal safety and user names (netchat/protocol/text.py)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netchat.protocol.limits import MAX_NAME_CHARS
from netchat.protocol.text import (
    is_safe_text,
    name_candidates,
    name_key,
    name_problem,
    repair_name,
    sanitize_text,
)

SETTINGS = settings(max_examples=400, deadline=None)

BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

HOSTILE_PIECES = [
    "\x1b[2J",
    "\x1b[H",
    "\x1b[31;1m",
    "\x1b[?25l",
    "\x1b]0;pwned\x07",
    "\x1b]8;;http://evil\x1b\\",
    "\x1bP1$r\x1b\\",
    "\x1b(B",
    "\x1bc",
    "\x1b7",
    "\x9b2J",
    "\x9d0;title\x9c",
    "\x1b",
    "\x9b",
    "\r",
    "\n",
    "\b",
    "\x07",
    "\x7f",
    "\x00",
    "\x85",
    "\u2028",
    "\u2029",
    "\u202e",
    "\u2066",
    "\t",
]
FRIENDLY_PIECES = ["Привет", "你好", "👋", "👩‍👩‍👧", "🏳️‍🌈", "e\u0301", "ok", " ", "[2J", ";", "]"]
MIXED = st.lists(
    st.sampled_from(HOSTILE_PIECES) | st.sampled_from(FRIENDLY_PIECES) | st.text(max_size=8),
    max_size=12,
).map("".join)


def moves_cursor_or_breaks_line(c: str) -> bool:
    return unicodedata.category(c) in {"Cc", "Cs", "Zl", "Zp"} or c in BIDI


# --- sanitize_text ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("hi\x1b[2Jthere", "hithere"),  # whole CSI gone, no "[2J" litter
        ("\x1b[1;31mred\x1b[0m", "red"),
        ("\x1b[?1049h", ""),
        ("\x9b2Jx", "x"),  # 8-bit CSI
        ("\x1b]0;new title\x07after", "after"),  # OSC with BEL
        ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "link"),  # OSC 8 hyperlink, ST
        ("\x9d0;title\x9cafter", "after"),  # 8-bit OSC and ST
        ("\x1bPq#0;2;0;0;0\x1b\\x", "x"),  # DCS (sixel)
        ("\x98sos\x9cok", "ok"),  # 8-bit SOS string
        ("a\x1b(Bb", "ab"),  # ESC ( B charset designation, all three characters
        ("a\x1bcb", "ab"),  # RIS
        ("a\x1b", "a"),
        ("line1\nline2", "line1 line2"),
        ("a\r\nb", "a  b"),
        ("fake\r<admin> hi", "fake <admin> hi"),
        ("tab\there", "tab here"),
        ("a\u2028b\u2029c\x85d", "a b c d"),
        ("bell\x07\x08\x7f\x00", "bell"),
        ("\x01\x02\x1f\x80\x9f", ""),
        ("abc\u202edcba", "abcdcba"),  # RLO
        ("\u2066\u2067\u2068x\u2069\u200e\u200f\u061c", "x"),
        ("\ud800lone", "lone"),
    ],
)
def test_sanitize_examples(raw: str, clean: str) -> None:
    assert sanitize_text(raw) == clean


@pytest.mark.parametrize(
    "text",
    [
        "Привет, мир! Как дела?",
        "你好，世界",
        "こんにちは",
        "שלום עולם",  # RTL script itself is fine; only overrides are removed
        "👋🏽 👩‍👩‍👧‍👦 🏳️‍🌈 👨‍💻",  # ZWJ sequences and skin tones stay whole
        "e\u0301 a\u0308",  # combining marks
        "1️⃣ #️⃣",  # keycaps with VS16
        "🇺🇦🇯🇵",  # regional indicators
        "x\u200by",  # zero-width space is not a control
        "[2J ; ] ~ ^ \\",
        "",
    ],
)
def test_sanitize_keeps_printable_text_identical(text: str) -> None:
    assert sanitize_text(text) == text
    assert sanitize_text(text) is text  # the fast path does not even copy
    assert is_safe_text(text)


SAFE_CHARS = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")).filter(
    lambda c: c not in BIDI
)


@SETTINGS
@given(st.text(SAFE_CHARS))
def test_safe_text_is_unchanged(text: str) -> None:
    assert sanitize_text(text) == text


@SETTINGS
@given(st.text() | MIXED)
def test_sanitize_is_idempotent(text: str) -> None:
    once = sanitize_text(text)
    assert sanitize_text(once) == once
    assert is_safe_text(once)


@SETTINGS
@given(st.text() | MIXED)
def test_sanitized_text_cannot_move_the_cursor(text: str) -> None:
    clean = sanitize_text(text)
    assert not any(moves_cursor_or_breaks_line(c) for c in clean)
    assert len(clean) <= len(text)
    clean.encode("utf-8")  # no lone surrogates: always encodable


# A bare ESC or CSI introducer swallows what follows it (as a terminal would), so
# only complete sequences and single controls are "pieces" here.
COMPLETE_PIECES = [p for p in HOSTILE_PIECES if p not in {"\x1b", "\x9b"}]


@SETTINGS
@given(
    st.text(SAFE_CHARS, max_size=10),
    st.sampled_from(COMPLETE_PIECES),
    st.text(SAFE_CHARS, max_size=10),
)
def test_hostile_piece_between_safe_text_disappears(before: str, piece: str, after: str) -> None:
    clean = sanitize_text(before + piece + after)
    # Whitespace controls become one space; everything else vanishes entirely,
    # including the parameters of an escape sequence.
    assert clean in {before + after, before + " " + after}


@SETTINGS
@given(st.text())
def test_is_safe_text_agrees_with_sanitize(text: str) -> None:
    assert is_safe_text(text) == (sanitize_text(text) == text)


# --- names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["alice", "Bob", "_x", "a.b-c", "x" * MAX_NAME_CHARS, "Алиса", "李雷", "Ölçü", "user_42", "٣"],
)
def test_valid_names(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("x" * (MAX_NAME_CHARS + 1), "at most"),
        ("a b", "only letters"),
        ("al\x1bice", "only letters"),
        ("ali\nce", "only letters"),
        ("bob\u202e", "only letters"),
        ("👋", "only letters"),
        ("a\u200db", "only letters"),
        ("<alice>", "only letters"),
        ("a:b", "only letters"),
        ("-dash", "start"),
        (".dot", "start"),
    ],
)
def test_invalid_names(name: str, fragment: str) -> None:
    problem = name_problem(name)
    assert problem is not None
    assert fragment in problem


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Alice", "alice"),
        ("ALICE", "alice"),
        ("Алиса", "алиса"),
        ("ＡＬＩＣＥ", "alice"),  # fullwidth letters fold by NFKC
        ("STRASSE", "straße"),
        ("ﬁsh", "fish"),
    ],
)
def test_name_key_folds_lookalikes(a: str, b: str) -> None:
    assert name_key(a) == name_key(b)


def test_name_key_keeps_different_names_apart() -> None:
    assert name_key("alice") != name_key("alice2")
    assert name_key("bob") != name_key("b.ob")


def test_name_candidates() -> None:
    candidates = name_candidates("alice")
    assert [next(candidates) for _ in range(3)] == ["alice2", "alice3", "alice4"]
    long = "x" * MAX_NAME_CHARS
    assert next(name_candidates(long)) == "x" * (MAX_NAME_CHARS - 1) + "2"
    many = list(name_candidates("bob"))
    assert len(many) == len(set(many)) == 9998
    assert many[-1] == "bob9999"


@pytest.mark.parametrize(
    ("name", "first"),
    [("-bob", "bob2"), ("", "guest2"), ("a b", "a_b2"), ("\x1b[2Jeve", "eve2"), ("  ", "guest2")],
)
def test_name_candidates_repair_bad_names(name: str, first: str) -> None:
    assert next(name_candidates(name)) == first


@SETTINGS
@given(st.text(max_size=40) | MIXED)
def test_repaired_names_and_candidates_are_valid(name: str) -> None:
    assert name_problem(repair_name(name)) is None
    candidates = name_candidates(name)
    for _ in range(3):
        candidate = next(candidates)
        assert name_problem(candidate) is None, candidate
