#!/usr/bin/env python3
"""The reference JA4 of TLS ClientHellos, by an independent implementation: the `ja4plus`
package from PyPI (pinned in requirements.txt, in the venv `cargo xtask siem` /
`cargo xtask test` makes: target/siem-venv, named in SIEM_PYTHON by the tests).

    target/siem-venv/bin/python deploy/siem/ja4_reference.py FILE...   # raw first bytes
    ... | target/siem-venv/bin/python deploy/siem/ja4_reference.py --hex # one hex hello per line

Prints one JSON object: {"FILE or line number": "t13d...", ...}; null where ja4plus finds
no ClientHello. The sensor's own JA4 (sensor::enrich::protocol::ja4) is checked against it.
"""
import json
import sys

from ja4plus import generate_ja4
from ja4plus.utils.tls_utils import parse_tls_handshake


def ja4_of(data: bytes):
    return generate_ja4(parse_tls_handshake(data))


def main() -> None:
    out = {}
    if sys.argv[1:] == ["--hex"]:
        for n, line in enumerate(sys.stdin):
            if line.strip():
                out[str(n)] = ja4_of(bytes.fromhex(line.strip()))
    else:
        for path in sys.argv[1:]:
            with open(path, "rb") as f:
                out[path] = ja4_of(f.read())
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
