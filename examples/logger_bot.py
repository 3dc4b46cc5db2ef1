"""A bot that keeps a transcript: every chat event, one line each, to a file or stdout.

Run it next to a server::

    python examples/logger_bot.py --host 127.0.0.1 --port 8080 --output chat.log

``--max-events`` and ``--duration`` bound its life (handy in tests and demos).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import TextIO

from netchat import Client, ConnectionClosed, NetchatError, Proto
from netchat.console import start_failure_message
from netchat.protocol import render_lines


def _open_output(path: str | None) -> contextlib.AbstractContextManager[TextIO]:
    if path is None:
        return contextlib.nullcontext(sys.stdout)  # not closed: it is not ours
    return open(path, "a", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", default="logger")
    parser.add_argument("--output", help="file to append to (default: stdout)")
    parser.add_argument("--max-events", type=int, default=0, help="stop after N events (0: never)")
    parser.add_argument("--duration", type=float, default=0, help="stop after S seconds (0: never)")
    args = parser.parse_args()

    # The output is opened first, so a bad path fails before the bot joins.
    with _open_output(args.output) as out:
        try:
            client = Client.connect(args.name, args.host, args.port)
        except NetchatError as exc:
            where = (Proto.tcp, args.host, args.port)
            print(f"logger_bot: {start_failure_message(exc, where)}", file=sys.stderr)
            return 1
        with client:
            print(f"logger_bot: joined as {client.name}", file=sys.stderr, flush=True)
            try:
                for frame in client.events(max_events=args.max_events, duration=args.duration):
                    for line in render_lines(frame, time.time()):
                        out.write(line + "\n")
                    out.flush()  # a transcript someone tails must be current
            except ConnectionClosed as exc:
                print(f"logger_bot: {exc}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
