"""Terminal safety and user names (netchat/protocol/text.py)."""

from __future__ import annotations

import itertools
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netchat.protocol.limits import MAX_NAME_CHARS
from netchat.protocol.text import (
    MAX_MARKS_PER_CHARACTER,
    MAX_NAME_MARKS,
    RESERVED_NAMES,
    NameIndex,
    name_candidates,
    name_key,
    name_keys,
    name_problem,
    names_clash,
    normalize_name,
    quote_input,
    repair_name,
    sanitize_text,
    skeleton,
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
    "   ",
    "\u3000\u3000",
    "\u3164",
    "\u2800",
    "\u00a0",
    "\u200b",
    "\U000e0041\U000e0042",  # TAG "AB"
    "\u0301" * 20,
    "\ufe0f",
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
        ("a\r\nb", "a b"),
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


def is_invisible(c: str) -> bool:
    return name_problem("a" + c) == "a name cannot contain invisible characters"


# Printable, visible, not a mark (floods of those are capped): words of these, one
# space apart, are what sanitising must leave exactly as they are.
SAFE_CHARS = st.characters(
    exclude_categories=("Cc", "Cs", "Zl", "Zp", "Zs", "Mn", "Me", "Cn", "Co")
).filter(lambda c: c not in BIDI and c != "\u2800" and not is_invisible(c))
SAFE_TEXT = st.lists(st.text(SAFE_CHARS, min_size=1, max_size=8), max_size=6).map(" ".join)


@SETTINGS
@given(SAFE_TEXT)
def test_safe_text_is_unchanged(text: str) -> None:
    assert sanitize_text(text) == text


@SETTINGS
@given(st.text() | MIXED)
def test_sanitize_is_idempotent(text: str) -> None:
    once = sanitize_text(text)
    assert sanitize_text(once) == once


@SETTINGS
@given(st.text() | MIXED)
def test_sanitized_text_cannot_move_the_cursor(text: str) -> None:
    clean = sanitize_text(text)
    assert not any(moves_cursor_or_breaks_line(c) for c in clean)
    assert len(clean) <= len(text)
    clean.encode("utf-8")  # no lone surrogates: always encodable


# A bare ESC or CSI introducer swallows what follows it (as a terminal would), so
# only complete sequences and single controls are "pieces" here; marks, zero-width
# spaces and variation selectors are kept (up to a limit), so they are not either.
COMPLETE_PIECES = [
    p for p in HOSTILE_PIECES if p not in {"\x1b", "\x9b", "\u200b", "\ufe0f", "\u0301" * 20}
]


@SETTINGS
@given(
    st.text(SAFE_CHARS, max_size=10),
    st.sampled_from(COMPLETE_PIECES),
    st.text(SAFE_CHARS, max_size=10),
)
def test_hostile_piece_between_safe_text_disappears(before: str, piece: str, after: str) -> None:
    clean = sanitize_text(before + piece + after)
    # Blanks and whitespace controls become one space; everything else vanishes
    # entirely, including the parameters of an escape sequence.
    assert clean in {before + after, before + " " + after}


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
        ("bob\u202e", "invisible"),
        ("👋", "only letters"),
        ("a\u200db", "invisible"),
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
    [
        ("-bob", "bob"),
        ("", "guest"),
        ("a b", "a_b"),
        ("al ice", "al_ice"),  # a number only if the cleaned name is taken too
        ("\x1b[2Jeve", "eve"),
        ("  ", "guest"),
        ("ali\u200bce", "alice"),  # invisible characters are dropped, not replaced
        ("\u3164\u3164", "guest"),
        ("admin", "admin2"),  # reserved: the cleaned name is no better
    ],
)
def test_name_candidates_repair_bad_names(name: str, first: str) -> None:
    assert next(name_candidates(name)) == first


@SETTINGS
@given(st.text(max_size=40) | MIXED)
def test_repaired_names_and_candidates_are_valid(name: str) -> None:
    # A repaired name follows the rules of form; it may be reserved (then the
    # candidates, which are all valid, carry a number).
    problem = name_problem(repair_name(name))
    assert problem is None or problem.endswith("is reserved"), problem
    candidates = name_candidates(name)
    for _ in range(3):
        candidate = next(candidates)
        assert name_problem(candidate) is None, candidate


# --- invisible payloads, floods of marks, padding (issue 6, items 9 and 10) -------------

# Every script keeps every letter: a sample of each, and emoji that combine.
REAL_SCRIPTS = [
    "Привет, как дела? Ёжик",  # Cyrillic
    "你好，世界。我们今天去哪儿？",  # CJK
    "こんにちは、カタカナ",  # Japanese
    "안녕하세요 세계",  # Hangul
    "नमस्ते दुनिया, क्षत्रिय",  # Devanagari with conjuncts and virama
    "مَرْحَبًا بِالْعَالَمِ",  # Arabic with harakat
    "שָׁלוֹם עוֹלָם",  # pointed Hebrew
    "สวัสดีครับ ภาษาไทย",  # Thai with stacked vowels and tones
    "བཀྲ་ཤིས་བདེ་ལེགས།",  # Tibetan stacks
    "Tie\u0302\u0301ng Vie\u0323\u0302t",  # Vietnamese, decomposed: two marks a letter
    "👋🏽 👩🏿‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏻‍🤝‍🧑🏾",  # skin tones and ZWJ sequences
    "🇺🇦 🇯🇵 🇧🇷",  # regional-indicator flags
    "1️⃣ #️⃣ ❤️",  # keycaps and variation selectors
]
SCOTLAND = "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"


@pytest.mark.parametrize("text", [*REAL_SCRIPTS, SCOTLAND, f"go {SCOTLAND}!"])
def test_real_scripts_and_emoji_are_kept_whole(text: str) -> None:
    assert sanitize_text(text) == text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("hi\U000e0069\U000e0067\U000e006e\U000e006f\U000e0072\U000e0065", "hi"),  # TAG "ignore"
        ("\U000e0001\U000e0041x", "x"),  # LANGUAGE TAG and a tag letter
        (f"\U000e0041{SCOTLAND}", SCOTLAND),  # only a flag's own tags survive
        ("🏴\U000e0041\U000e007f", "🏴"),  # not one of the three flags
        ("x\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f", "x"),  # not after 🏴
        ("a" + "\u0301" * 3000 + "b", "a" + "\u0301" * MAX_MARKS_PER_CHARACTER + "b"),
        ("a" + "\u0301\u200d" * 20, "a" + "\u0301\u200d" * 8 + "\u200d" * 12),  # ZWJ: same base
        ("\u0301" * 10, "\u0301" * MAX_MARKS_PER_CHARACTER),  # marks with no base at all
        ("hi" + " " * 300 + "* alice left", "hi * alice left"),
        ("hi\u3000\u3000\u2003\u00a0there", "hi there"),
        ("a\u3164\u3164\u3164b", "a b"),  # Hangul fillers draw nothing: a blank
        ("a\u2800\u2800b", "a b"),  # braille blank
        ("a \u200b \u200b \u2060 b", "a b"),  # zero-width characters inside a blank run
        ("a\r\n\r\n\r\nb", "a b"),
        ("a\u00a0b", "a b"),
    ],
)
def test_hidden_and_padding_characters(raw: str, clean: str) -> None:
    assert sanitize_text(raw) == clean
    assert sanitize_text(clean) == clean


def _letters(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c)[0] in "LN" and not is_invisible(c)]


def _longest_mark_run(text: str) -> int:
    longest = run = 0
    for c in text:
        kind = unicodedata.category(c)
        if kind in {"Mn", "Me"}:
            run += 1
            longest = max(longest, run)
        elif kind != "Cf":
            run = 0
    return longest


BLANK_LOOKING = set(" \u00a0\u1680\u202f\u205f\u3000\u2800\u3164\u115f\u1160\uffa0") | {
    chr(c) for c in range(0x2000, 0x200B)
}
_ESCAPE_INTRODUCERS = frozenset("\x1b\x9b\x90\x9d\x9e\x9f\x98")
ANY_TEXT = st.text() | MIXED | st.sampled_from(REAL_SCRIPTS)
NO_INTRODUCER = ANY_TEXT.filter(lambda t: _ESCAPE_INTRODUCERS.isdisjoint(t))


@SETTINGS
@given(NO_INTRODUCER)
def test_sanitizing_never_removes_a_letter_or_digit(text: str) -> None:
    # An escape sequence takes its parameters with it; everything else that is a
    # letter or digit of some script stays, in order.
    assert _letters(sanitize_text(text)) == _letters(text)


@SETTINGS
@given(ANY_TEXT)
def test_sanitized_text_has_no_hidden_payload_padding_or_mark_flood(text: str) -> None:
    clean = sanitize_text(text)
    assert not any(0xE0000 <= ord(c) <= 0xE007F for c in clean.replace(SCOTLAND, ""))
    assert _longest_mark_run(clean) <= MAX_MARKS_PER_CHARACTER
    for first, second in itertools.pairwise(clean):
        assert not (first in BLANK_LOOKING and second in BLANK_LOOKING), repr(clean)


@pytest.mark.parametrize(
    ("raw", "quoted"),
    [
        ("bob", "'bob'"),
        ("bob\u200b", "'bob\\u200b'"),  # what made the name differ is shown
        ("a\x1b[2Jb", "'ab'"),
        ("x" * 100, "'" + "x" * 32 + "'…"),
        ("Зоя", "'Зоя'"),
    ],
)
def test_quote_input(raw: str, quoted: str) -> None:
    assert quote_input(raw) == quoted


@SETTINGS
@given(st.text() | st.sampled_from(["\u200b" * 65_000, "\U000e0041" * 30_000, "\x00" * 65_000]))
def test_quoting_is_bounded_whatever_the_input(text: str) -> None:
    # repr() of 64 KiB of zero-width spaces is 6x longer than the frame limit: the
    # error quoting it could not be sent, and the sender was disconnected.
    quoted = quote_input(text)
    assert len(quoted) <= 10 * 32 + 3
    assert sanitize_text(quoted) == quoted  # safe as it is


# --- names: look-alikes, invisible and reserved names (issue 6, item 8) ------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("аlice", "alice"),  # Cyrillic а
        ("aIice", "alice"),  # capital I for l
        ("a1ice", "alice"),  # digit one for l
        ("ALICE", "alice"),
        ("ВОВ", "BOB"),  # all Cyrillic capitals
        ("Вася", "вася"),
        ("рaypal", "paypal"),  # Cyrillic р
        ("ＡＬＩＣＥ", "alice"),
        ("STRASSE", "straße"),
        ("ﬁsh", "fish"),
        ("Jose\u0301", "José"),  # decomposed and composed
        ("rnike", "mike"),  # r + n looks like m
    ],
)
def test_look_alike_names_clash(a: str, b: str) -> None:
    assert names_clash(a, b) and names_clash(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("alice", "alice2"),
        ("bob", "b.ob"),
        ("nick", "vick"),
        ("Алиса", "Алина"),
        ("李雷", "李雪"),
        ("bob", "ВОВ"),  # small latin and Cyrillic capitals do not look alike
    ],
)
def test_different_names_do_not_clash(a: str, b: str) -> None:
    assert not names_clash(a, b)


def test_skeletons_follow_unicode_confusables() -> None:
    # Spot checks against Unicode's confusables.txt (UTS #39).
    assert skeleton("а") == skeleton("a")  # U+0430 → U+0061
    assert skeleton("I") == skeleton("l") == skeleton("1") == skeleton("|")
    assert skeleton("0") == skeleton("O")
    assert skeleton("m") == skeleton("rn")
    assert skeleton("𝐚𝐥𝐢𝐜𝐞") == skeleton("alice")
    assert skeleton("a\u200bl\u2060ice") == skeleton("alice")  # default ignorables vanish
    assert skeleton("a") != skeleton("o")


@pytest.mark.parametrize(
    "name",
    [
        "\u3164",
        "alice\u3164",
        "\u200b",
        "bob\u200b",
        "\u115f\u1160",
        "\uffa0",
        "x\u2060y",
        "a\ufe0f",
    ],
)
def test_invisible_characters_are_refused_in_names(name: str) -> None:
    assert name_problem(name) == "a name cannot contain invisible characters"


@pytest.mark.parametrize(
    "name", [*RESERVED_NAMES, "Server", "ADMIN", "ѕerver", "r\u043eot", "SYSTEM", "netCHAT"]
)
def test_reserved_names_and_their_look_alikes_are_refused(name: str) -> None:
    problem = name_problem(name)
    assert problem is not None and problem.endswith("is reserved")


@pytest.mark.parametrize(
    "name", ["José", "Jose\u0301", "राम", "क्षत्रिय", "สมชาย", "Nguyễn", "Ngue\u0302\u0303n", "ⅷ"]
)
def test_names_with_marks_and_decomposed_names_are_valid(name: str) -> None:
    assert name_problem(name) is None
    assert normalize_name(name) == unicodedata.normalize("NFC", name)
    assert name_key(name) == name_key(normalize_name(name))


def test_a_name_may_not_start_with_a_mark_or_stack_them() -> None:
    assert name_problem("\u0301a") is not None
    assert name_problem("a" + "\u0301" * MAX_NAME_MARKS) is None
    assert name_problem("a" + "\u0316" * (MAX_NAME_MARKS + 1)) is not None


def test_name_index_decides_with_name_keys() -> None:
    index: NameIndex[int] = NameIndex()
    index["alice"] = 1
    index["bob"] = 2
    assert "ALICE" in index and "аlice" in index and "aIice" in index
    assert index.get("Alice") == 1 and index.get("carol") is None
    assert index.clash("alice", ignoring=1) is None
    with pytest.raises(KeyError):
        index["aIice"] = 3  # the same shape as alice
    del index["Alice"]
    assert "alice" not in index and list(index) == ["bob"] and list(index.values()) == [2]
    index["ALlCE"] = 3  # now free
    assert index.get("ALICE") == 3  # shape of ALICE: A L l C E
    assert len(index) == 2
    index.clear()
    assert len(index) == 0 and "bob" not in index


def test_a_case_change_that_copies_another_name_clashes() -> None:
    index: NameIndex[str] = NameIndex()
    index["alice"] = "alice's"
    index["ALlCE"] = "another"  # clashes with neither alice (fold) nor its shape
    # alice becoming ALICE would look exactly like ALlCE.
    assert index.clash("ALICE", ignoring="alice's") == "another"
    assert index.clash("Alice", ignoring="alice's") is None


NAMEISH = st.text(st.characters(codec="utf-8"), max_size=MAX_NAME_CHARS + 4) | st.sampled_from(
    ["alice", "аlice", "aIice", "ALICE", "Алиса", "admin", "Jose\u0301", "x" * 30]
)


@SETTINGS
@given(NAMEISH, NAMEISH)
def test_clashing_is_symmetric_and_total(a: str, b: str) -> None:
    assert names_clash(a, b) == names_clash(b, a)
    assert names_clash(a, a)
    keys = name_keys(a)
    assert keys == name_keys(a)


@SETTINGS
@given(NAMEISH | MIXED)
def test_name_rules_are_total_and_normalising_is_idempotent(name: str) -> None:
    name_problem(name)  # never raises
    once = normalize_name(name)
    assert normalize_name(once) == once
    problem = name_problem(repair_name(name))
    assert problem is None or problem.endswith("is reserved")
    candidate = next(name_candidates(name))
    assert name_problem(candidate) is None
    if name_problem(name) is None and normalize_name(name) == name:
        assert candidate != name  # a valid name is offered only when taken: vary it


def test_valid_names_have_no_invisible_characters() -> None:
    for name in ["alice", "Алиса", "李雷", "राम"]:
        assert not any(is_invisible(c) for c in name)
