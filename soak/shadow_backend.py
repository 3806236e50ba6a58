#!/usr/bin/env python3
"""The soak's shadow backend: an HTTP/1.1 server on 127.0.0.1 that cycles through faults.

    shadow_backend.py --port P --phase-seconds S --out counts.json

It answers 200 at once ("ok") until it gets SIGUSR1, then cycles, S seconds per phase:
  ok     200 at once
  slow   200 after 1 s
  dead   listening socket closed and open connections aborted: connections are refused
  reset  response headers announcing 1000 bytes, 100 bytes of body, then a TCP reset
  error  503 with a body
On SIGTERM it writes what it received per phase (and the phase log) to --out and exits.
asyncio protocols rather than http.server: the shadow gets a copy of every request of the
soak's load, so it must keep up with the front Envoy on a shared 2-core machine.
"""
import argparse
import asyncio
import json
import signal
import socket
import struct
import time

PHASES = ["ok", "slow", "dead", "reset", "error"]
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-type: text/plain\r\n\r\nshadow\n"
ERROR = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 6\r\ncontent-type: text/plain\r\n\r\nerror\n"
RESET_HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: text/plain\r\n\r\n" + b"x" * 100


class State:
    def __init__(self):
        self.mode = "ok"
        self.received = {p: 0 for p in PHASES}
        self.phase_log = []  # [unix time, phase]
        self.conns = set()


STATE = State()


class Conn(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""
        STATE.conns.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc):
        STATE.conns.discard(self)

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    try:
                        length = int(line.split(b":", 1)[1].strip())
                    except ValueError:
                        length = 0
            total = end + 4 + length
            if len(self.buf) < total:
                return
            self.buf = self.buf[total:]
            self.answer()

    def answer(self):
        mode = STATE.mode
        STATE.received[mode] += 1
        if mode == "ok":
            self.transport.write(OK)
        elif mode == "error":
            self.transport.write(ERROR)
        elif mode == "slow":
            asyncio.get_running_loop().call_later(1.0, self.late)
        elif mode == "reset":
            self.transport.write(RESET_HEAD)
            self.reset()
        else:  # dead: a connection accepted just before the switch
            self.reset()

    def late(self):
        if not self.transport.is_closing():
            self.transport.write(OK)

    def reset(self):
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER 0: close() sends a RST instead of a FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


async def listen(port):
    loop = asyncio.get_running_loop()
    return await loop.create_server(Conn, "127.0.0.1", port, backlog=4096, reuse_address=True)


async def main(args):
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    cycle = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, cycle.set)
    server = await listen(args.port)
    STATE.phase_log.append([time.time(), "ok"])

    async def cycler():
        nonlocal server
        await cycle.wait()
        i = 0
        while True:
            phase = PHASES[i % len(PHASES)]
            if phase == "dead":
                server.close()
                for c in list(STATE.conns):
                    c.reset()
            elif STATE.mode == "dead":
                server = await listen(args.port)
            STATE.mode = phase
            STATE.phase_log.append([time.time(), phase])
            i += 1
            await asyncio.sleep(args.phase_seconds)

    task = asyncio.create_task(cycler())
    await stop.wait()
    task.cancel()
    with open(args.out, "w") as f:
        json.dump({"received": STATE.received, "phases": STATE.phase_log}, f)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--phase-seconds", type=float, default=10.0)
    p.add_argument("--out", required=True)
    asyncio.run(main(p.parse_args()))
