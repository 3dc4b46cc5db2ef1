"""``netchat bench``: the same chat workload over every transport, side by side.

Run it from the command line (``netchat bench --help``) or from Python::

    from netchat.bench import BenchParams, run_bench
    from netchat.impair import Impairment

    results = run_bench(BenchParams(protos=("tcp", "udp"), impairment=Impairment(loss=0.05)))

See docs/TRANSPORTS.md ("Measuring the difference") for what each figure means.
"""

from __future__ import annotations

from .params import BenchParams, expand_protos, parse_hostport, proto_names
from .report import json_document
from .runner import ProtoResult, run_bench, run_proto

__all__ = [
    "BenchParams",
    "ProtoResult",
    "expand_protos",
    "json_document",
    "parse_hostport",
    "proto_names",
    "run_bench",
    "run_proto",
]
