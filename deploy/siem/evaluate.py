#!/usr/bin/env python3
"""Run Sigma rules over recorded sensor output, the way a SIEM would: each rule converted by
pySigma's SQLite backend and executed against a table of the flattened events.

    evaluate.py --rules deploy/siem/sigma --events run.jsonl

The events are JSON lines (`sensor run --all`, or any flat JSON such as Sysmon-style
records). Nested objects are flattened with dots (`process.executable`), one column per
field; numbers stay numbers so port comparisons are numeric; booleans become 'true'/'false'
as Sigma compares them; arrays are kept as JSON text. Prints one JSON object: every rule
with its id, title, level, SQL and the 1-based line numbers it matched.
"""

import argparse
import json
import re
import sqlite3
import sys
from pathlib import Path

from sigma.backends.sqlite import sqliteBackend
from sigma.collection import SigmaCollection

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import t1571_pipelines as pipelines  # noqa: E402

LINE = "_line"  # our own column: the event's line number in the input


def flatten(value, prefix="", out=None):
    out = {} if out is None else out
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(v, f"{prefix}{k}.", out)
    elif isinstance(value, bool):
        out[prefix[:-1]] = "true" if value else "false"
    elif isinstance(value, list):
        out[prefix[:-1]] = json.dumps(value)
    else:
        out[prefix[:-1]] = value
    return out


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def load(conn: sqlite3.Connection, events: Path) -> int:
    rows = []
    with events.open(encoding="utf-8") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{events}: line {n}: not JSON: {e}")
            if not isinstance(doc, dict):
                raise SystemExit(f"{events}: line {n}: not a JSON object")
            row = flatten(doc)
            row[LINE] = n
            rows.append(row)
    columns = sorted({c for r in rows for c in r} - {LINE})
    # No declared type: values keep their own (numbers compare as numbers); NOCASE as Sigma's
    # string matching is case-insensitive.
    conn.execute(
        f"CREATE TABLE logs ({quote(LINE)} INTEGER, "
        + ", ".join(f"{quote(c)} COLLATE NOCASE" for c in columns)
        + ")"
        if columns
        else f"CREATE TABLE logs ({quote(LINE)} INTEGER)"
    )
    for r in rows:
        names = list(r)
        conn.execute(
            f"INSERT INTO logs ({', '.join(map(quote, names))}) VALUES ({', '.join('?' * len(names))})",
            [r[k] for k in names],
        )
    return len(rows)


def run(conn: sqlite3.Connection, sql: str) -> list[int]:
    select = sql.replace("SELECT * FROM logs", f"SELECT {quote(LINE)} FROM logs", 1)
    while True:
        try:
            return sorted(r[0] for r in conn.execute(select))
        except sqlite3.OperationalError as e:
            # A field no event carries is a column of NULLs (absent, as in a SIEM).
            m = re.fullmatch(r"no such column: (.+)", str(e))
            if not m:
                raise
            conn.execute(f"ALTER TABLE logs ADD COLUMN {quote(m.group(1).strip('`'))} COLLATE NOCASE")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", action="append", required=True, type=Path, help="a directory of Sigma rules")
    ap.add_argument("--events", required=True, type=Path, help="JSON lines")
    args = ap.parse_args()

    conn = sqlite3.connect(":memory:")
    conn.create_function(
        "REGEXP", 2, lambda pattern, value: value is not None and re.search(pattern, str(value)) is not None,
        deterministic=True,
    )
    count = load(conn, args.events)
    results = []
    for directory in args.rules:
        for path in sorted(directory.glob("*.yml")):
            for rule in SigmaCollection.load_ruleset([path]).rules:
                backend = sqliteBackend(pipelines.sqlite_pipeline())
                (sql,) = backend.convert_rule(rule)
                results.append({
                    "id": str(rule.id),
                    "title": rule.title,
                    "level": rule.level.name.lower() if rule.level else None,
                    "file": str(path),
                    "sql": sql,
                    "matches": run(conn, sql),
                })
    json.dump({"events": count, "rules": results}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
