"""Names and quoting in the hub: look-alikes, reserved and invisible names, suggestions,
and errors that quote what a user sent (issue 6 items 7 and 8, issue 7)."""

from __future__ import annotations

import pytest

from netchat.errors import Rejected
from netchat.hub import Hub, Member, Outbound
from netchat.protocol.frames import Nick, Private, PrivateMessage, Renamed, Welcome
from netchat.protocol.limits import MAX_FRAME_BYTES
from netchat.streamlog import WireFormat
from tests.test_hub import Inbox, join


def join_one(hub: Hub, name: str) -> Member:
    return hub.join(name, peer="p", wire_format=WireFormat.JSON)


@pytest.fixture
def hub() -> Hub:
    return Hub(server_name="test-server")


@pytest.mark.parametrize(
    ("name", "looks_like"),
    [
        ("аlice", "alice"),  # Cyrillic а
        ("aIice", "alice"),  # capital I
        ("a1ice", "alice"),
        ("ALICE", "alice"),
        ("ВОВ", "BOB"),  # every letter Cyrillic
    ],
)
def test_a_look_alike_of_a_member_is_refused(hub: Hub, name: str, looks_like: str) -> None:
    join(hub, looks_like)
    with pytest.raises(Rejected) as info:
        join_one(hub, name)
    assert info.value.code == "name-taken"
    suggestion = info.value.suggestion
    assert suggestion is not None
    assert str(info.value) == f"the name '{name}' is taken; try '{suggestion}'"
    join_one(hub, suggestion)  # the suggestion really is free
    assert len(hub) == 2


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("alice\u3164", "a name cannot contain invisible characters"),
        ("\u3164", "a name cannot contain invisible characters"),
        ("\u200b\u200b", "a name cannot contain invisible characters"),
        ("server", "the name 'server' is reserved"),
        ("Аdmin", "the name 'admin' is reserved"),  # Cyrillic А
    ],
)
def test_invisible_and_reserved_names_are_refused(hub: Hub, name: str, problem: str) -> None:
    with pytest.raises(Rejected) as info:
        join_one(hub, name)
    assert info.value.code == "bad-name"
    assert str(info.value).startswith(problem + "; try '")
    assert len(hub) == 0


def test_a_decomposed_name_joins_in_its_composed_form(hub: Hub) -> None:
    member = join_one(hub, "Jose\u0301")
    assert member.name == "José" and hub.names() == ("José",)
    (welcome,) = Inbox(hub, member).read()
    assert isinstance(welcome, Welcome) and welcome.name == "José"
    with pytest.raises(Rejected):
        join_one(hub, "José")  # the same name, typed composed


def test_suggestions_add_a_number_only_when_the_cleaned_name_is_taken(hub: Hub) -> None:
    with pytest.raises(Rejected) as info:
        join_one(hub, "al ice")
    assert info.value.suggestion == "al_ice"
    join(hub, "al_ice")
    with pytest.raises(Rejected) as info:
        join_one(hub, "al ice")
    assert info.value.suggestion == "al_ice2"


def test_nick_to_a_look_alike_of_another_member_is_refused(hub: Hub) -> None:
    alice, _ = join(hub, "alice", "BOB")
    error = hub.handle(alice.member, Nick("ВОВ"))  # Cyrillic capitals
    assert error is not None and error.code == "name-taken"
    assert hub.handle(alice.member, Nick("Alice")) is None  # a case change is fine
    assert [type(f) for f in alice.read()] == [Renamed]
    assert hub.names() == ("BOB", "Alice")


def test_a_case_change_may_not_copy_another_members_look(hub: Hub) -> None:
    alice, _ = join(hub, "alice", "ALlCE")  # lower-case L: its own name, not alice's
    error = hub.handle(alice.member, Nick("ALICE"))  # would look exactly like ALlCE
    assert error is not None and error.code == "name-taken"
    assert hub.names() == ("alice", "ALlCE")


def test_msg_finds_a_member_by_case_and_look_alike(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "BOB")
    hub.handle(alice.member, Private("bob", "hi"))
    hub.handle(alice.member, Private("ВОВ", "hi again"))  # Cyrillic capitals look like BOB
    assert [f.to for f in bob.of(PrivateMessage)] == ["BOB", "BOB"]


@pytest.mark.parametrize("target", ["\u200b" * 20_000, "\U000e0041" * 16_000, "\x7f" * 60_000])
def test_an_error_quoting_a_huge_odd_target_is_bounded(hub: Hub, target: str) -> None:
    # repr() of 20,000 zero-width spaces is 120,000 characters: the error could not be
    # encoded, and the sender was disconnected with "server error".
    alice, bob = join(hub, "alice", "bob")
    error = hub.handle(alice.member, Private(target, "hi"))
    assert error is not None and error.code == "no-such-user"
    out = Outbound(error, 0.0)
    assert len(out.json) < 1000 and len(out.text) < 1000
    assert error.text.startswith("no user named '")
    assert error.text.endswith("…; /who lists who is online")
    assert bob.read() == []
    assert len(out.json) <= MAX_FRAME_BYTES
