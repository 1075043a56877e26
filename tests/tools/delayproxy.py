#!/usr/bin/env python3
"""delayproxy: a user-space TCP proxy that adds delay, for tests (this kernel
has no netem).

    from delayproxy import DelayProxy
    with DelayProxy(("127.0.0.1", 5556), delay_ms=20) as px:   # listens on px.port
        ... connect to ("127.0.0.1", px.port) instead of 5556 ...
        px.cut()          # every open connection is reset: a link failure

    python3 tests/tools/delayproxy.py --listen 127.0.0.1:7000 \\
        --target 127.0.0.1:5556 --delay-ms 20 [--up-delay-ms N] [--down-delay-ms N]
        [--rate-kbps K] [--cut-after-s S]
    (prints "delayproxy: listening on HOST:PORT -> HOST:PORT" once ready;
     SIGUSR1 cuts all connections, SIGINT/SIGTERM stop it, exit 0)

Contract:
- Every accepted connection gets its own connection to the target.  Each
  direction is delayed separately: a chunk read at time t is written at
  t + delay (up: client -> target, down: target -> client), in the order
  read, so the stream is intact and only shifted in time.  A round trip
  through the proxy therefore takes at least up + down delay.
- rate_kbps (optional, per direction and connection) caps the bandwidth: a
  chunk of n bytes also occupies the link for n / rate seconds after the
  previous one left (a simple serialisation delay, no queue limit).
- An end of stream (FIN) is delayed like data and then passed on as a
  half-close; when either side resets or both have closed, both sockets are
  closed.
- cut() (also SIGUSR1, or cut_after_s) closes every open connection with a
  reset (SO_LINGER 0) on both sides, dropping data in flight; the proxy
  keeps listening, so later connections work (a link that failed and came
  back).  pause()/resume() stop and restart accepting new connections.
- start() returns once the listening socket is bound (port 0 picks a free
  port, read px.port); stop() cuts everything and joins the thread.  One
  background thread runs an asyncio loop; the public methods are thread-safe.
"""
import argparse
import asyncio
import signal
import socket
import struct
import sys
import threading
import time


class _Pipe:
    """One direction of one connection: read, hold until due, write."""

    def __init__(self, proxy, reader, writer, delay_s, rate_bps):
        self.proxy = proxy
        self.reader, self.writer = reader, writer
        self.delay_s, self.rate_bps = delay_s, rate_bps
        self.queue = asyncio.Queue()
        self.link_free = 0.0  # when the (rate-capped) link is free again

    async def read_loop(self):
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await self.reader.read(65536)
                now = loop.time()
                due = now + self.delay_s
                if data and self.rate_bps:
                    start = max(now, self.link_free)
                    self.link_free = start + len(data) * 8 / self.rate_bps
                    due = self.link_free + self.delay_s
                self.queue.put_nowait((due, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            self.queue.put_nowait((loop.time(), None))  # reset: end at once

    async def write_loop(self):
        loop = asyncio.get_running_loop()
        while True:
            due, data = await self.queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                raise ConnectionResetError("peer reset")
            if not data:
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                return
            self.writer.write(data)
            await self.writer.drain()


class _Conn:
    def __init__(self, proxy, c_reader, c_writer):
        self.proxy = proxy
        self.c_reader, self.c_writer = c_reader, c_writer
        self.t_writer = None
        self.tasks = []

    async def run(self):
        p = self.proxy
        try:
            t_reader, self.t_writer = await asyncio.open_connection(*p.target)
        except OSError:
            _reset(self.c_writer)
            return
        up = _Pipe(p, self.c_reader, self.t_writer, p.up_delay_s, p.rate_bps)
        down = _Pipe(p, t_reader, self.c_writer, p.down_delay_s, p.rate_bps)
        self.tasks = [asyncio.ensure_future(x) for x in
                      (up.read_loop(), up.write_loop(), down.read_loop(), down.write_loop())]
        p._conns.add(self)
        try:
            # done when both writers finished (both FINs passed) or any failed
            writers = [self.tasks[1], self.tasks[3]]
            pending = set(writers)
            while pending:
                done, pending = await asyncio.wait(pending,
                                                   return_when=asyncio.FIRST_COMPLETED)
                if any(t.exception() for t in done if not t.cancelled()):
                    self.cut()
                    return
        except asyncio.CancelledError:
            pass
        finally:
            p._conns.discard(self)
            for t in self.tasks:
                t.cancel()
            for w in (self.c_writer, self.t_writer):
                if w is not None and not w.is_closing():
                    w.close()

    def cut(self):
        for w in (self.c_writer, self.t_writer):
            if w is not None:
                _reset(w)
        for t in self.tasks:
            t.cancel()
        self.proxy._conns.discard(self)


def _reset(writer):
    """Closes with RST (SO_LINGER 0), as a failed link looks to the peer."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    transport = writer.transport
    if transport is not None:
        transport.abort()


class DelayProxy:
    def __init__(self, target, delay_ms=0.0, listen=("127.0.0.1", 0), up_delay_ms=None,
                 down_delay_ms=None, rate_kbps=None, cut_after_s=None):
        """target, listen: (host, port).  delay_ms: one-way delay in each
        direction (up_delay_ms / down_delay_ms override one).  rate_kbps:
        bandwidth cap per direction and connection (None: none)."""
        self.target = (target[0], int(target[1]))
        self.listen = (listen[0], int(listen[1]))
        self.up_delay_s = (delay_ms if up_delay_ms is None else up_delay_ms) / 1e3
        self.down_delay_s = (delay_ms if down_delay_ms is None else down_delay_ms) / 1e3
        self.rate_bps = rate_kbps * 1000 if rate_kbps else 0
        self.cut_after_s = cut_after_s
        self.port = None
        self.cuts = 0
        self._conns = set()
        self._loop = None
        self._server = None
        self._thread = None
        self._ready = threading.Event()
        self._error = None
        self._accepting = True

    # -- public, thread-safe --
    def start(self):
        self._thread = threading.Thread(target=self._run, name="delayproxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            raise self._error
        if self.port is None:
            raise RuntimeError("delayproxy did not start")
        return self

    def stop(self):
        if self._loop is None:
            return
        try:
            self._call(self._shutdown)
        except RuntimeError:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def cut(self):
        """Resets every open connection (the proxy keeps listening)."""
        self._call(self._cut)

    def pause(self):
        """New connections are refused (reset at once) until resume()."""
        self._accepting = False

    def resume(self):
        self._accepting = True

    def connections(self):
        """The number of connections open through the proxy now."""
        return self._call(lambda: len(self._conns))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- the loop thread --
    def _call(self, fn):
        if self._loop is None:
            raise RuntimeError("delayproxy is not running")
        done = threading.Event()
        box = {}

        def run():
            try:
                box["v"] = fn()
            finally:
                done.set()
        self._loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("delayproxy loop did not answer")
        return box.get("v")

    def _cut(self):
        self.cuts += 1
        for c in list(self._conns):
            c.cut()

    def _shutdown(self):
        self._cut()
        if self._server is not None:
            self._server.close()

    async def _accept(self, reader, writer):
        if not self._accepting:
            _reset(writer)
            return
        await _Conn(self, reader, writer).run()

    def _run(self):
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._accept, self.listen[0], self.listen[1],
                                     reuse_address=True))
            self.port = self._server.sockets[0].getsockname()[1]
        except OSError as e:
            self._error = e
            self._loop = None
            self._ready.set()
            loop.close()
            return
        if self.cut_after_s is not None:
            loop.call_later(self.cut_after_s, self._cut)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for t in asyncio.all_tasks(loop):
                t.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()


def _hostport(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {s!r}")
    return host, int(port)


def main(argv=None):
    ap = argparse.ArgumentParser(description="A TCP proxy that adds a fixed one-way delay "
                                 "per direction (tests/tools/delayproxy.py).")
    ap.add_argument("--listen", type=_hostport, default=("127.0.0.1", 0),
                    help="HOST:PORT to listen on (port 0: a free one; default 127.0.0.1:0)")
    ap.add_argument("--target", type=_hostport, required=True, help="HOST:PORT to forward to")
    ap.add_argument("--delay-ms", type=float, default=0.0,
                    help="one-way delay in each direction (default 0)")
    ap.add_argument("--up-delay-ms", type=float, help="client -> target delay (overrides)")
    ap.add_argument("--down-delay-ms", type=float, help="target -> client delay (overrides)")
    ap.add_argument("--rate-kbps", type=float, help="bandwidth cap per direction and connection")
    ap.add_argument("--cut-after-s", type=float,
                    help="reset all connections this long after the start")
    a = ap.parse_args(argv)
    for v in (a.delay_ms, a.up_delay_ms, a.down_delay_ms, a.rate_kbps, a.cut_after_s):
        if v is not None and v < 0:
            ap.error("delays, rates and times must be >= 0")
    px = DelayProxy(a.target, a.delay_ms, a.listen, a.up_delay_ms, a.down_delay_ms,
                    a.rate_kbps, a.cut_after_s)
    stop = threading.Event()
    cut = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: cut.set())
    px.start()
    print(f"delayproxy: listening on {a.listen[0]}:{px.port} -> {a.target[0]}:{a.target[1]}, "
          f"delay {px.up_delay_s * 1e3:g}/{px.down_delay_s * 1e3:g} ms", flush=True)
    while not stop.is_set():
        stop.wait(0.1)
        if cut.is_set():
            cut.clear()
            px.cut()
            print(f"delayproxy: cut all connections ({time.strftime('%H:%M:%S')})",
                  flush=True)
    px.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
