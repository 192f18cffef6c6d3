#!/usr/bin/env python3
"""A small TCP proxy for hostile-network tests: it forwards every connection to one target, adds latency per
direction (without reducing bandwidth: data is delayed, not held back), can limit the rate per direction (one token
bucket per direction shared by all connections, like a link), and can CUT the link: close every open connection
(both sides see a reset) and refuse new ones (accepted, then closed at once) for a given time.

Serve:
  cutting_proxy.py serve --listen 127.0.0.1:0 --target HOST:PORT --port-file F --control SOCKET
                   [--delay-up-ms N] [--delay-down-ms N] [--rate-bytes-per-second N]
  "up" is client -> target, "down" is target -> client. The bound port is written to --port-file once it listens.
  Events (connections, cuts) are logged on stderr with a timestamp.

Control (a line protocol on the Unix socket --control; `cutting_proxy.py ctl SOCKET COMMAND...` sends one line and
prints the one-line answer):
  cut SECONDS                       cut now, refuse new connections for SECONDS
  cut-after up|down BYTES SECONDS   arm a cut: it fires when one connection has carried BYTES more bytes in that
                                    direction since this command (the chunk that crosses the mark is dropped)
  rate BYTES_PER_SECOND             change the rate limit (0: none)
  status                            JSON: connections, bytes_up, bytes_down, refusing, armed, cuts (each cut's
                                    reason, time and connections closed)
Python 3 standard library only."""
import argparse
import asyncio
import json
import os
import socket
import sys
import time

CHUNK = 16 * 1024
QUEUE_CHUNKS = 512  # Up to 8 MiB in flight per direction and connection: enough for 20 Mbit/s x 1 s of latency.


def log(message):
    print(f"{time.strftime('%H:%M:%S')} cutting_proxy: {message}", file=sys.stderr, flush=True)


class Pacer:
    """A token bucket of one direction, shared by all connections."""

    def __init__(self, rate):
        self.rate = rate
        self.next_free = 0.0

    async def take(self, n):
        if self.rate <= 0:
            return
        loop = asyncio.get_running_loop()
        start = max(loop.time(), self.next_free)
        self.next_free = start + n / self.rate
        delay = self.next_free - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


class Proxy:
    def __init__(self, args):
        self.target_host, self.target_port = args.target.rsplit(":", 1)
        self.delay = {"up": args.delay_up_ms / 1000.0, "down": args.delay_down_ms / 1000.0}
        self.pacer = {"up": Pacer(args.rate_bytes_per_second), "down": Pacer(args.rate_bytes_per_second)}
        self.connections = set()  # Of Connection.
        self.bytes = {"up": 0, "down": 0}
        self.refuse_until = 0.0
        self.armed = None  # (direction, bytes, seconds, {connection: bytes at arming})
        self.cuts = []
        self.next_id = 1

    def refusing(self):
        return asyncio.get_running_loop().time() < self.refuse_until

    def cut(self, seconds, reason):
        loop = asyncio.get_running_loop()
        closed = len(self.connections)
        for c in list(self.connections):
            c.abort()
        self.refuse_until = max(self.refuse_until, loop.time() + seconds)
        self.cuts.append({"reason": reason, "time": time.time(), "connections": closed, "seconds": seconds})
        log(f"CUT ({reason}): {closed} connection(s) closed; refusing new connections for {seconds:g} s")

    def count(self, conn, direction, n):
        """Counts n bytes; returns False when they cut the link (and are to be dropped)."""
        self.bytes[direction] += n
        conn.bytes[direction] += n
        if self.armed and self.armed[0] == direction:
            _, limit, seconds, start = self.armed
            carried = conn.bytes[direction] - start.get(conn, 0)
            if carried >= limit:
                self.armed = None
                self.cut(seconds, f"{direction} carried {carried} bytes on connection {conn.id}")
                return False
        return True

    async def handle(self, client_reader, client_writer):
        if self.refusing():
            client_writer.transport.abort()
            log("refused a connection (link cut)")
            return
        try:
            target_reader, target_writer = await asyncio.open_connection(self.target_host, int(self.target_port))
        except OSError as e:
            log(f"cannot reach the target {self.target_host}:{self.target_port}: {e}")
            client_writer.transport.abort()
            return
        conn = Connection(self, self.next_id, client_writer, target_writer)
        self.next_id += 1
        self.connections.add(conn)
        log(f"connection {conn.id} opened ({len(self.connections)} open)")
        try:
            await asyncio.gather(conn.pump(client_reader, target_writer, "up"),
                                 conn.pump(target_reader, client_writer, "down"))
        finally:
            self.connections.discard(conn)
            conn.abort()
            log(f"connection {conn.id} closed (up {conn.bytes['up']} B, down {conn.bytes['down']} B)")

    async def control(self, reader, writer):
        try:
            line = (await reader.readline()).decode().split()
            answer = self.command(line)
        except Exception as e:  # An answer for the caller, never a crash of the proxy.
            answer = f"error: {e}"
        writer.write((answer + "\n").encode())
        await writer.drain()
        writer.close()

    def command(self, words):
        if not words:
            return "error: empty command"
        if words[0] == "cut" and len(words) == 2:
            self.cut(float(words[1]), "cut command")
            return "ok"
        if words[0] == "cut-after" and len(words) == 4 and words[1] in ("up", "down"):
            self.armed = (words[1], int(words[2]), float(words[3]),
                          {c: c.bytes[words[1]] for c in self.connections})
            log(f"armed: cut after {words[2]} bytes {words[1]} for {words[3]} s")
            return "ok"
        if words[0] == "rate" and len(words) == 2:
            for p in self.pacer.values():
                p.rate = float(words[1])
            return "ok"
        if words[0] == "status" and len(words) == 1:
            return json.dumps({"connections": len(self.connections), "bytes_up": self.bytes["up"],
                               "bytes_down": self.bytes["down"], "refusing": self.refusing(),
                               "armed": self.armed is not None, "cuts": self.cuts})
        return f"error: unknown command {' '.join(words)!r}"


class Connection:
    def __init__(self, proxy, id_, client_writer, target_writer):
        self.proxy = proxy
        self.id = id_
        self.writers = (client_writer, target_writer)
        self.bytes = {"up": 0, "down": 0}
        self.aborted = False

    def abort(self):
        self.aborted = True
        for w in self.writers:
            w.transport.abort()

    async def pump(self, reader, writer, direction):
        """Reads, paces, counts and queues; a second task writes each chunk once its delay has passed."""
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue(QUEUE_CHUNKS)

        async def write():
            while True:
                item = await queue.get()
                if item is None:
                    if not self.aborted and writer.can_write_eof():
                        writer.write_eof()
                    return
                due, data = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.aborted:
                    return
                writer.write(data)
                await writer.drain()

        writer_task = asyncio.create_task(write())
        try:
            while not self.aborted:
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self.proxy.pacer[direction].take(len(data))
                if self.aborted or not self.proxy.count(self, direction, len(data)):
                    break
                await queue.put((loop.time() + self.proxy.delay[direction], data))
        except (ConnectionError, OSError):
            self.abort()
        if self.aborted:
            writer_task.cancel()
        else:
            await queue.put(None)
        try:
            await writer_task
        except (ConnectionError, OSError, asyncio.CancelledError):
            self.abort()


async def serve(args):
    proxy = Proxy(args)
    host, port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(proxy.handle, host, int(port))
    if os.path.exists(args.control):
        os.unlink(args.control)
    control = await asyncio.start_unix_server(proxy.control, args.control)
    bound = server.sockets[0].getsockname()[1]
    log(f"listening on {host}:{bound} -> {args.target} (delay up {args.delay_up_ms} ms, down "
        f"{args.delay_down_ms} ms, rate {args.rate_bytes_per_second or 'unlimited'} B/s); control {args.control}")
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{bound}\n")
    os.replace(tmp, args.port_file)
    async with server, control:
        await asyncio.gather(server.serve_forever(), control.serve_forever())


def ctl(path, words):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall((" ".join(words) + "\n").encode())
    answer = b""
    while not answer.endswith(b"\n"):
        part = s.recv(65536)
        if not part:
            break
        answer += part
    print(answer.decode().strip())
    return 1 if answer.startswith(b"error") else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--listen", default="127.0.0.1:0")
    s.add_argument("--target", required=True)
    s.add_argument("--port-file", required=True)
    s.add_argument("--control", required=True)
    s.add_argument("--delay-up-ms", type=float, default=0)
    s.add_argument("--delay-down-ms", type=float, default=0)
    s.add_argument("--rate-bytes-per-second", type=float, default=0)
    c = sub.add_parser("ctl")
    c.add_argument("control")
    c.add_argument("words", nargs="+")
    args = parser.parse_args()
    if args.mode == "ctl":
        sys.exit(ctl(args.control, args.words))
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
