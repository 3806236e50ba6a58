#!/usr/bin/env python3
"""Writes a copy of a .wasm module without the named exports (the code stays until wasm-opt
drops what nothing reaches any more).

Why: Envoy calls a plugin's stream callback only when the module exports it, and each call into
the VM costs ~0.8 µs of Envoy CPU per request (BENCHMARKS.md, wasm-noop-lean). The proxy-wasm
Rust SDK exports every callback, so every stream pays for the ones a filter never uses.

Usage: strip-exports.py IN.wasm OUT.wasm EXPORT_NAME...
Fails if IN.wasm is not a Wasm module or lacks one of the names (an SDK change renamed it).
"""
import sys


def read_leb(buf, at):
    value = shift = 0
    while True:
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def leb(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def strip(module, names):
    if module[:4] != b"\0asm":
        sys.exit("strip-exports: not a Wasm module")
    out, at, removed = bytearray(module[:8]), 8, set()
    while at < len(module):
        section = module[at]
        size, start = read_leb(module, at + 1)
        body, at = module[start : start + size], start + size
        if section == 7:  # the export section: a vector of (name, kind, index)
            count, pos = read_leb(body, 0)
            kept = []
            for _ in range(count):
                length, name_at = read_leb(body, pos)
                name = body[name_at : name_at + length].decode()
                _, end = read_leb(body, name_at + length + 1)  # kind byte, then index
                if name in names:
                    removed.add(name)
                else:
                    kept.append(body[pos:end])
                pos = end
            body = leb(len(kept)) + b"".join(kept)
        out += bytes([section]) + leb(len(body)) + body
    missing = set(names) - removed
    if missing:
        sys.exit(f"strip-exports: the module does not export {', '.join(sorted(missing))}")
    return bytes(out)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    source, target, *names = sys.argv[1:]
    with open(source, "rb") as f:
        stripped = strip(f.read(), names)
    with open(target, "wb") as f:
        f.write(stripped)
