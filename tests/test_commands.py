"""The /command language (netchat/protocol/commands.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netchat.errors import CommandError
from netchat.protocol.commands import HELP_TEXT, parse_input, split_command
from netchat.protocol.frames import Act, Frame, Help, Nick, Private, Quit, Say, Who


@pytest.mark.parametrize(
    ("line", "frame"),
    [
        ("hello", Say("hello")),
        ("", Say("")),
        ("  spaced  ", Say("  spaced  ")),  # plain text is passed on as typed
        ("Привет 👋", Say("Привет 👋")),
        ("not/a command", Say("not/a command")),
        ("//etc/passwd is a path", Say("/etc/passwd is a path")),  # // escapes a leading /
        ("//", Say("/")),
        ("///", Say("//")),
        ("/who", Who()),
        ("/w", Who()),
        ("/names", Who()),
        ("/WHO", Who()),
        ("/who ignored args", Who()),
        ("/help", Help()),
        ("/?", Help()),
        ("/Help", Help()),
        ("/quit", Quit("")),
        ("/exit", Quit("")),
        ("/quit going home", Quit("going home")),
        ("/quit   bye  ", Quit("bye")),
        ("/me waves", Act("waves")),
        ("/ME waves hello", Act("waves hello")),
        ("/me   dances  ", Act("dances")),
        ("/nick bob", Nick("bob")),
        ("/nick  Боб ", Nick("Боб")),
        ("/msg bob hi there", Private("bob", "hi there")),
        ("/m bob hi", Private("bob", "hi")),
        ("/tell bob hi", Private("bob", "hi")),
        ("/MSG bob  two  spaces ", Private("bob", "two  spaces")),
        ("/msg   bob   hi", Private("bob", "hi")),
        ("/msg Алиса привет 👋", Private("Алиса", "привет 👋")),
    ],
)
def test_parse_input(line: str, frame: Frame) -> None:
    parsed = parse_input(line)
    assert parsed == frame
    assert type(parsed) is type(frame)


@pytest.mark.parametrize(
    ("line", "usage"),
    [
        ("/msg", "/msg NAME TEXT"),
        ("/msg   ", "/msg NAME TEXT"),
        ("/msg bob", "/msg NAME TEXT"),
        ("/msg bob   ", "/msg NAME TEXT"),
        ("/m bob", "/msg NAME TEXT"),
        ("/tell", "/msg NAME TEXT"),
        ("/me", "/me ACTION"),
        ("/me    ", "/me ACTION"),
        ("/nick", "/nick NEW"),
        ("/nick  ", "/nick NEW"),
    ],
)
def test_missing_arguments_give_usage(line: str, usage: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_input(line)
    assert str(info.value) == f"usage: {usage}"


@pytest.mark.parametrize("line", ["/frobnicate", "/", "/ who", "/msg\tbob hi", "/kick bob"])
def test_unknown_command(line: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_input(line)
    assert "unknown command" in str(info.value)
    assert "/help" in str(info.value)


def test_split_command() -> None:
    assert split_command("/msg bob hi") == ("msg", "bob hi")
    assert split_command("/M bob hi") == ("msg", "bob hi")
    assert split_command("/who") == ("who", "")
    assert split_command("hi") is None
    assert split_command("//hi") is None


def test_help_text_lists_every_command() -> None:
    for command in ["/who", "/msg NAME TEXT", "/me", "/nick NEW", "/help", "/quit", "//"]:
        assert command in HELP_TEXT


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_any_line_parses_to_a_frame_or_command_error(line: str) -> None:
    try:
        frame = parse_input(line)
    except CommandError as exc:
        assert line.startswith("/")
        assert not line.startswith("//")
        assert str(exc)
        return
    if not line.startswith("/"):
        assert frame == Say(line)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_double_slash_always_escapes(rest: str) -> None:
    assert parse_input("//" + rest) == Say("/" + rest)
