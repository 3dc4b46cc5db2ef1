"""A bot that echoes: ``!echo TEXT`` is repeated to everyone, a mention is answered.

Run it next to a server::

    python examples/echo_bot.py --host 127.0.0.1 --port 8080

``--max-events`` and ``--duration`` bound its life (handy in tests and demos).
"""

from __future__ import annotations

import argparse
import sys

from netchat import Client, ConnectionClosed, Message, NetchatError, Proto
from netchat.console import mentions, start_failure_message


def reply_to(message: Message, me: str) -> str | None:
    """What the bot says in answer to ``message``, if anything."""
    if message.sender == me:
        return None  # never answer ourselves: two echo bots would loop forever
    if message.text.startswith("!echo "):
        return message.text.removeprefix("!echo ").strip() or None
    if mentions(message.text, me):
        return f"{message.sender}: you said {message.text!r}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", default="echo")
    parser.add_argument("--max-events", type=int, default=0, help="stop after N events (0: never)")
    parser.add_argument("--duration", type=float, default=0, help="stop after S seconds (0: never)")
    args = parser.parse_args()

    try:
        client = Client.connect(args.name, args.host, args.port)
    except NetchatError as exc:
        where = (Proto.tcp, args.host, args.port)
        print(f"echo_bot: {start_failure_message(exc, where)}", file=sys.stderr)
        return 1
    with client:
        print(f"echo_bot: joined as {client.name}", file=sys.stderr, flush=True)
        try:
            for frame in client.events(max_events=args.max_events, duration=args.duration):
                if isinstance(frame, Message) and (answer := reply_to(frame, client.name)):
                    client.say(answer)
        except ConnectionClosed as exc:
            print(f"echo_bot: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
