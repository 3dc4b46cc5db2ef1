"""The benchmark's outputs: one JSON document, CSV rows, a table for people, a plot.

The JSON shape is documented in docs/TRANSPORTS.md ("Measuring the difference");
the CSV has the same rows, flattened, with the same names.
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from .. import __version__
from ..errors import BenchError
from ..impair import LinkCounters
from .params import BenchParams
from .runner import ProtoResult

#: Row fields that are not part of the JSON document or the CSV.
_INTERNAL = ("cdf_ms",)
#: Keys of the ``slow`` object (present when some receivers are slow).
SLOW_KEYS = (
    "receivers",
    "expected",
    "delivered",
    "p50_ms",
    "p99_ms",
    "others_p50_ms",
    "others_p99_ms",
)
PLOT_HINT = 'the plot needs matplotlib: pip install "netchat[plot]"'


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def result_dict(result: ProtoResult) -> dict[str, Any]:
    """One entry of ``results``: every documented key, in a stable order."""
    row = asdict(result)
    for key in _INTERNAL:
        row.pop(key)
    return {key: _rounded(value) for key, value in row.items()}


def json_document(params: BenchParams, results: Sequence[ProtoResult]) -> dict[str, Any]:
    """The document ``--json`` prints: ``{"params": …, "results": […], …}``."""
    return {
        "netchat": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "params": _rounded(params.as_dict()),
        "results": [result_dict(result) for result in results],
    }


def csv_columns() -> list[str]:
    """The CSV header: the JSON row keys, nested objects flattened with ``_``."""
    names = [key for key in ProtoResult.__dataclass_fields__ if key not in _INTERNAL]
    columns: list[str] = []
    counters = list(LinkCounters.__dataclass_fields__)
    for name in names:
        if name == "injected":
            columns += [f"injected_{way}_{key}" for way in ("up", "down") for key in counters]
        elif name == "slow":
            columns += [f"slow_{key}" for key in SLOW_KEYS]
        else:
            columns.append(name)
    return columns


def csv_row(result: ProtoResult) -> dict[str, Any]:
    row = result_dict(result)
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if key == "injected":
            for way, counters in (value or {}).items():
                for name, count in counters.items():
                    flat[f"injected_{way}_{name}"] = count
        elif key == "slow":
            for name in SLOW_KEYS:
                flat[f"slow_{name}"] = (value or {}).get(name)
        elif key == "notes":
            flat[key] = "; ".join(value)
        else:
            flat[key] = value
    return flat


def write_csv(path: Path, results: Sequence[ProtoResult]) -> None:
    """The rows of the JSON document, one line per transport.

    Raises:
        BenchError: the file cannot be written.
    """
    try:
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=csv_columns(), extrasaction="ignore")
            writer.writeheader()
            for result in results:
                writer.writerow(csv_row(result))
    except OSError as exc:
        raise BenchError(f"cannot write {path}: {exc.strerror or exc}") from exc


# --- the table ---------------------------------------------------------------------------

TABLE_COLUMNS = (
    "proto",
    "delivered",
    "lost",
    "dup",
    "reord",
    "jitter ms",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "msgs/s",
    "wire/msg",
    "bytes/msg",
    "server µs/msg",
)


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table_cells(result: ProtoResult) -> list[str]:
    """One row of the table, as text."""
    if not result.ok:
        return [result.proto, "error", *["-"] * (len(TABLE_COLUMNS) - 2)]
    pct = f" ({result.delivered_pct:.1f}%)" if result.delivered_pct is not None else ""
    wire = "-"
    if result.wire_packets_per_msg is not None:
        unit = {"datagram": "dg", "segment": "seg"}.get(result.wire_unit, result.wire_unit)
        wire = f"{result.wire_packets_per_msg:.2f} {unit}"
    return [
        result.proto,
        f"{result.delivered}/{result.expected}{pct}",
        str(result.lost),
        str(result.duplicates),
        str(result.reordered),
        _num(result.jitter_ms, 2),
        _num(result.p50_ms, 2),
        _num(result.p95_ms, 2),
        _num(result.p99_ms, 2),
        _num(result.max_ms, 2),
        _num(result.msgs_per_s, 0),
        wire,
        _num(result.wire_bytes_per_msg, 0),
        _num(result.server_cpu_us_per_msg, 1),
    ]


def footnotes(results: Sequence[ProtoResult]) -> list[str]:
    """Errors, notes and the slow-receiver figures, one line each."""
    lines = []
    for result in results:
        if result.error:
            lines.append(f"{result.proto}: could not run: {result.error}")
        for note in result.notes:
            lines.append(f"{result.proto}: {note}")
        if result.slow is not None:
            slow = result.slow
            lines.append(
                f"{result.proto}: slow receivers got {slow['delivered']}/{slow['expected']},"
                f" p99 {_num(slow['p99_ms'], 1)} ms; the others' p99 {_num(slow['others_p99_ms'], 1)} ms"
            )
    return lines


def print_table(results: Sequence[ProtoResult], title: str, out: IO[str], *, rich: bool) -> None:
    """The results side by side: a rich table on a terminal, aligned text otherwise."""
    rows = [table_cells(result) for result in results]
    if rich:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for index, header in enumerate(TABLE_COLUMNS):
            table.add_column(header, justify="left" if index == 0 else "right")
        for cells, result in zip(rows, results, strict=True):
            table.add_row(*cells, style=None if result.ok else "red")
        Console(file=out).print(table)
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(TABLE_COLUMNS)]
        out.write(title + "\n")
        for cells in [list(TABLE_COLUMNS), *rows]:
            padded = [
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(cells)
            ]
            out.write("  ".join(padded).rstrip() + "\n")
    for line in footnotes(results):
        out.write(line + "\n")


# --- the plot ----------------------------------------------------------------------------


def plot_available() -> bool:
    """Whether matplotlib (the ``plot`` extra) is installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plot(path: Path, results: Sequence[ProtoResult], title: str) -> None:
    """A PNG: latency CDF per transport, and delivered / lost / duplicate bars.

    Raises:
        BenchError: matplotlib is missing, or the file cannot be written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BenchError(PLOT_HINT) from exc
    ran = [result for result in results if result.ok]
    figure, (cdf, bars) = plt.subplots(1, 2, figsize=(12, 4.8))
    figure.suptitle(title, fontsize=10)
    for result in ran:
        if result.cdf_ms:
            fractions = [i / 100 for i in range(len(result.cdf_ms))]
            cdf.step(
                [max(v, 1e-3) for v in result.cdf_ms], fractions, where="post", label=result.proto
            )
    cdf.set_xscale("log")
    cdf.set_xlabel("latency (ms, log scale)")
    cdf.set_ylabel("fraction of deliveries")
    cdf.set_title("latency CDF")
    cdf.grid(True, which="both", alpha=0.3)
    if ran:
        cdf.legend()
    names = [result.proto for result in ran]
    width = 0.27
    series = (
        ("delivered", [r.delivered for r in ran]),
        ("lost", [r.lost for r in ran]),
        ("duplicates", [r.duplicates for r in ran]),
    )
    for offset, (label, values) in enumerate(series):
        positions = [i + (offset - 1) * width for i in range(len(ran))]
        drawn = bars.bar(positions, values, width, label=label)
        bars.bar_label(drawn, fontsize=7)
    bars.set_xticks(range(len(ran)), names)
    bars.set_ylabel("messages (summed over receivers)")
    bars.set_title("delivered, lost, duplicates")
    bars.legend()
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=110)
    except OSError as exc:
        raise BenchError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(figure)
