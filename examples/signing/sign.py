"""Signs a Sluice event (SPEC 13 'signed') with the `cryptography` package,
and checks itself against signing-vectors.json.

    python3 examples/signing/sign.py                 check the vectors
    python3 examples/signing/sign.py SEEDHEX JSON    print {"signature_hex"} for an event
"""
import json
import pathlib
import struct
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

FIELDS = ("source", "id", "type", "actor", "scope", "dedupe_key", "payload")


def message(event):
    """b"sluice-event-v1", then each field as a 4-byte big-endian length and its UTF-8 bytes; NULL is ffffffff."""
    out = bytearray(b"sluice-event-v1")
    for name in FIELDS:
        value = event.get(name)
        if value is None:
            out += b"\xff\xff\xff\xff"
        else:
            data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            out += struct.pack(">I", len(data)) + data
    return bytes(out)


def sign_event(seed_hex, event):
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex)).sign(message(event)).hex()


def main():
    if len(sys.argv) == 3:
        print(json.dumps({"signature_hex": sign_event(sys.argv[1], json.loads(sys.argv[2]))}))
        return 0
    vectors = json.loads((pathlib.Path(__file__).parent / "signing-vectors.json").read_text())
    failed = 0
    for case in vectors["cases"]:
        ok = message(case).hex() == case["message_hex"] and sign_event(vectors["private_key_seed_hex"], case) == case["signature_hex"]
        failed += not ok
        print(("ok  " if ok else "FAIL") + " " + case["case"])
    print(f"{len(vectors['cases']) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
