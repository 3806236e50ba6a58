#!/usr/bin/env python3
"""Prints a `baggage` header line carrying a freshly signed lane, as `lane_secret` signs it
(`<name>;sig=v2.<unix s>.<tag>`, docs/configuration.md "Signed values"):

    bench/lane_value.py SECRET NAME [UNIX_SECONDS]

For bench/callgrind.sh's callgrind-lanes-verify scenario (CG_HEADER_CMD), where every request
carries a lane the filter verifies."""
import hashlib
import hmac
import struct
import sys
import time


def frame(b):
    return b"\x01" + struct.pack(">Q", len(b)) + b


def lane_value(secret, name, ts):
    key = hmac.new(secret.encode(), b"traffic-split lane v2", hashlib.sha256).digest()
    msg = struct.pack(">Q", 1) + frame(name.encode()) + struct.pack(">Q", ts)
    tag = hmac.new(key, msg, hashlib.sha256).digest()[:16].hex()
    return f"{name};sig=v2.{ts}.{tag}"


if __name__ == "__main__":
    ts = int(sys.argv[3]) if len(sys.argv) > 3 else int(time.time())
    print(f"baggage: split-lane={lane_value(sys.argv[1], sys.argv[2], ts)}")
