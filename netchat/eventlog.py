"""``--event-log FILE``: every chat event as one JSON object per line, for grading and tools."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, TextIO


class EventLog:
    """Append events to a JSON-lines file; safe to call from any thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # Line buffering: each event reaches the file when it happens, so a grader
        # tailing it (or a server killed with SIGKILL) loses nothing.
        self._file: TextIO = self.path.open("a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()
