"""``python -m netchat``: the same as the ``netchat`` command."""

from .cli import main

main()
