#!/usr/bin/env python3
"""Which Sigma modifiers each pinned backend can express: converts a one-item probe rule per
modifier (plain and negated) with each backend and its pipeline, as convert.py does, and
prints a Markdown table (README.md holds its output). Run with the venv's Python."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sigma.backends.sqlite import sqliteBackend  # noqa: E402
from sigma.collection import SigmaCollection  # noqa: E402

import convert  # noqa: E402
import t1571_pipelines as pipelines  # noqa: E402

PROBES = {
    "contains": "process.executable|contains: 'bin'",
    "startswith": "process.executable|startswith: '/tmp/'",
    "endswith": "process.executable|endswith: '/nc'",
    "re": "process.executable|re: '[/]nc$'",
    "cidr (IPv4)": "destination.ip|cidr: '10.0.0.0/8'",
    "cidr (IPv6)": "destination.ip|cidr: 'fc00::/7'",
    "cidr, two ranges": "destination.ip|cidr: ['10.0.0.0/8', '192.168.0.0/16']",
    "gt": "destination.port|gt: 1024",
    "exists": "sensor.allow_rule|exists: true",
    "null": "sensor.allow_rule: null",
    "contains\\|all": "process.command_line|contains|all: ['a', 'b']",
    "cased": "process.executable|cased: '/usr/bin/NC'",
    "fieldref": "process.name|fieldref: process.thread.name",
    "base64offset": "process.command_line|base64offset|contains: 'curl'",
    "windash": "process.command_line|windash|contains: '-z'",
}

RULE = """title: probe
id: 00000000-0000-4000-8000-0000000000{n:02d}
status: test
logsource: {{product: linux, service: t1571-sensor}}
detection:
    selection:
        event.action: network-connect
    probe:
        {probe}
    condition: selection and {cond}
level: low
"""


def main() -> int:
    backends = [(name, b[2], b[3], b[4]) for name, b in convert.BACKENDS.items() if name != "secops-yara-l"]
    backends.append(("sqlite", sqliteBackend, "default", pipelines.sqlite_pipeline))
    print("| modifier | " + " | ".join(b[0] for b in backends) + " |")
    print("|---|" + "---|" * len(backends))
    for n, (name, probe) in enumerate(PROBES.items()):
        cells = []
        for _, make, fmt, pipeline in backends:
            verdicts = []
            for cond in ("probe", "not probe"):
                rule = SigmaCollection.from_yaml(RULE.format(n=n, probe=probe, cond=cond)).rules[0]
                try:
                    make(pipeline()).convert_rule(rule, fmt)
                    verdicts.append("yes")
                except Exception as e:  # noqa: BLE001 (backends raise anything)
                    verdicts.append(f"no ({type(e).__name__})")
            cells.append(verdicts[0] if verdicts[0] == verdicts[1] else f"{verdicts[0]}; negated {verdicts[1]}")
        print(f"| `{name}` | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
