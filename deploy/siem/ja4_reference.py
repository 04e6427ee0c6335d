#!/usr/bin/env python3
"""The reference JA4 of TLS ClientHellos, by an independent implementation: the `ja4plus`
package from PyPI (pinned in requirements.txt, in the venv `cargo xtask siem` /
`cargo xtask test` makes: target/siem-venv, named in SIEM_PYTHON by the tests).

    target/siem-venv/bin/python deploy/siem/ja4_reference.py FILE...   # raw first bytes
    ... | target/siem-venv/bin/python deploy/siem/ja4_reference.py --hex # one hex hello per line
    target/siem-venv/bin/python deploy/siem/ja4_reference.py --listen 203.0.113.7:8443
        # accepts one connection on that address (a test namespace's), reads the client's
        # first flight, closes it, prints {"ADDR:PORT": "t13d..."}: run the client again
        # against it to learn the reference JA4 of the ClientHello it sends

Prints one JSON object: {"FILE or line number": "t13d...", ...}; null where ja4plus finds
no ClientHello. The sensor's own JA4 (sensor::enrich::protocol::ja4) is checked against it.
"""
import json
import socket
import sys

from ja4plus import generate_ja4
from ja4plus.utils.tls_utils import parse_tls_handshake


def ja4_of(data: bytes):
    return generate_ja4(parse_tls_handshake(data))


def first_flight(conn: socket.socket) -> bytes:
    """The client's first bytes: a whole TLS record (up to 16 KiB), or what came in 5 s."""
    data = b""
    conn.settimeout(5)
    while len(data) < 16389:
        try:
            chunk = conn.recv(16389 - len(data))
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
        if len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[3:5], "big"):
            break
    return data


def listen_once(addr: str) -> bytes:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, int(port)))
        srv.listen(1)
        print("listening", file=sys.stderr, flush=True)
        conn, _ = srv.accept()
        with conn:
            return first_flight(conn)


def main() -> None:
    out = {}
    if len(sys.argv) == 3 and sys.argv[1] == "--listen":
        out[sys.argv[2]] = ja4_of(listen_once(sys.argv[2]))
    elif sys.argv[1:] == ["--hex"]:
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
