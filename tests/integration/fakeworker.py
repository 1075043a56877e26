#!/usr/bin/env python3
"""fakeworker: a deterministic stand-in for itt-worker (the worker side of
proto/PROTOCOL.md), for testing and measuring the broker alone.

Tokens are a pure function of the history, so a replayed session continues
exactly as the lost one would have:
    token at position p = (token at p-1 * 31 + p) % vocab
the piece of token t is the single letter chr(97 + t % 26), and a text prompt
tokenizes to BOS (1) followed by one token per byte (byte % vocab).

Behaviour it can be told to have, for fault tests:
  --delay-ms D       answer each OPEN/STEP after D ms (heartbeats go on)
  --die-after N      exit at once (os._exit) when the (N+1)-th step arrives
  --stall-after N    after N results go silent: no results, no heartbeats
  --bye-after N      send BYE after N results and exit
  --kv-sessions K    answer OPEN with ERROR OVERLOADED while K sessions are open
  SIGUSR1            stall now (as --stall-after)
Every message received (and HELLO/WELCOME) is appended to --events FILE as
one line: "OPEN sid ntokens n_prompt prompt_hex", "STEP sid step",
"CLOSE sid reason", "WELCOME", "ERROR code reason", "HELLO".

Also a library for the tests: SIG, command bytes, pb(), tokenize(),
expected_tokens().
"""
import argparse
import os
import random
import signal
import socket
import sys
import time

SIG = b"ITT\x01"
SUBMIT, CHUNK, DONE, ERROR, CANCEL, HEARTBEAT, STATS, STATS_REPLY = range(1, 9)
HELLO, WELCOME, OPEN, STEP, RESULT, CLOSE, BYE = range(0x10, 0x17)
BOS = 1


def pb():
    """The generated itt_pb2 module (from $ITT_PY_DIR)."""
    d = os.environ.get("ITT_PY_DIR")
    if d and d not in sys.path:
        sys.path.insert(0, d)
    import itt_pb2  # noqa: E402
    return itt_pb2


def next_token(prev, pos, vocab):
    return (prev * 31 + pos) % vocab


def piece(tok):
    return bytes([97 + tok % 26])


def tokenize(text, vocab):
    return [BOS] + [b % vocab for b in text.encode()]


def expected_tokens(prompt_tokens, n, vocab, eos=-1, ctx=1 << 30):
    """(tokens as streamed, stop reason) for max_tokens n, as the broker ends it."""
    hist = list(prompt_tokens)
    out = []
    while True:
        if len(out) >= n:
            return out, "length"
        if len(hist) >= ctx:
            return out, "context"
        t = next_token(hist[-1], len(hist), vocab)
        if t == eos:
            return out, "eos"
        out.append(t)
        hist.append(t)


class FakeWorker:
    def __init__(self, a):
        import zmq
        self.zmq = zmq
        self.a = a
        self.P = pb()
        self.ctx = zmq.Context()
        self.sock = None
        self.hb_ms = a.heartbeat_ms
        self.liveness = 3
        self.sessions = {}      # sid -> [cache tokens]
        self.last_step = {}     # sid -> last step number
        self.pending = []       # (due, sid, step, frames)
        self.results = 0
        self.stalled = False
        self.backoff = 0.25
        self.events = open(a.events, "a", buffering=1) if a.events else None
        self.id = a.id or f"{socket.gethostname()}:{os.getpid()}:fake"

    def event(self, line):
        if self.events:
            self.events.write(line + "\n")

    def send(self, cmd, msg=None):
        body = msg.SerializeToString() if msg is not None else b""
        self.sock.send_multipart([SIG, bytes([cmd]), body])
        self.last_send = time.monotonic()

    def hello(self):
        P = self.P
        h = P.WorkerHello(worker_id=self.id, host=socket.gethostname(), pid=os.getpid(),
                          model=self.a.model, layer_first=0, layer_last=self.a.layers,
                          n_layers=self.a.layers, vocab=self.a.vocab, ctx_len=self.a.ctx,
                          dim=64, eos_token=self.a.eos, max_sessions=self.a.max_sessions,
                          threads=1, cores=os.cpu_count() or 1, mem_bytes=1 << 30)
        self.event("HELLO")
        self.send(HELLO, h)

    def connect(self):
        zmq = self.zmq
        if self.sock is not None:
            self.sock.close(0)
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 4000)
        s.setsockopt(zmq.MAXMSGSIZE, 64 << 20)
        s.connect(self.a.broker)
        self.sock = s
        self.sessions.clear()
        self.last_step.clear()
        self.pending.clear()
        self.last_recv = time.monotonic()
        self.hello()

    def result(self, sid, step, prompt_tokens=None):
        cache = self.sessions[sid]
        t = next_token(cache[-1], len(cache), self.a.vocab)
        r = self.P.StepResult(session_id=sid, step=step, token=t, piece=piece(t),
                              n_pos=len(cache), step_ms=0.01)
        if prompt_tokens is not None:
            r.prompt_tokens.extend(prompt_tokens)
        due = time.monotonic() + self.a.delay_ms / 1e3
        self.pending.append((due, sid, step, r))

    def error(self, sid, code, reason):
        self.send(ERROR, self.P.Error(code=code, reason=reason, session_id=sid))

    def handle(self, frames):
        P = self.P
        if len(frames) not in (3, 4) or frames[0] != SIG or len(frames[1]) != 1:
            print(f"fakeworker {self.id}: garbage from the broker dropped", file=sys.stderr)
            return
        cmd, body = frames[1][0], frames[2]
        if cmd == WELCOME:
            w = P.Welcome.FromString(body)
            self.hb_ms = w.heartbeat_ms or self.hb_ms
            self.liveness = w.liveness or self.liveness
            self.backoff = 0.25
            self.event("WELCOME")
        elif cmd == HEARTBEAT:
            pass
        elif cmd == ERROR:
            e = P.Error.FromString(body)
            self.event(f"ERROR {e.code} {e.reason}")
            if e.code == P.NOT_FOUND and "unknown worker" in e.reason:
                self.hello()
        elif cmd == OPEN:
            o = P.SessionOpen.FromString(body)
            toks = list(o.tokens)
            tokenized = None
            if not toks:
                toks = tokenized = tokenize(o.prompt, self.a.vocab)
            self.event(f"OPEN {o.session_id} {len(toks)} {o.n_prompt} {o.prompt.encode().hex()}")
            if self.a.kv_sessions and len(self.sessions) >= self.a.kv_sessions:
                self.error(o.session_id, P.OVERLOADED, "no KV memory for another session")
                return
            if len(toks) >= self.a.ctx:
                self.error(o.session_id, P.INVALID_ARGUMENT,
                           f"prompt of {len(toks)} tokens does not fit the context of "
                           f"{self.a.ctx}")
                return
            self.sessions[o.session_id] = toks
            self.last_step[o.session_id] = 0
            self.result(o.session_id, 0, tokenized)
        elif cmd == STEP:
            s = P.StepRequest.FromString(body)
            self.event(f"STEP {s.session_id} {s.step}")
            if s.session_id not in self.sessions:
                self.error(s.session_id, P.NOT_FOUND, f"session {s.session_id} is not open")
                return
            if s.step != self.last_step[s.session_id] + 1:
                print(f"fakeworker {self.id}: session {s.session_id} step {s.step} after "
                      f"{self.last_step[s.session_id]}", file=sys.stderr)
            if self.a.die_after is not None and self.results >= self.a.die_after:
                os._exit(3)
            self.last_step[s.session_id] = s.step
            self.sessions[s.session_id].extend(s.tokens)
            if len(self.sessions[s.session_id]) >= self.a.ctx:
                self.error(s.session_id, P.INVALID_ARGUMENT, "context full")
                return
            self.result(s.session_id, s.step)
        elif cmd == CLOSE:
            c = P.SessionClose.FromString(body)
            self.event(f"CLOSE {c.session_id} {c.reason}")
            self.sessions.pop(c.session_id, None)
            self.last_step.pop(c.session_id, None)
            self.pending = [p for p in self.pending if p[1] != c.session_id]

    def flush(self, now):
        keep = []
        for p in self.pending:
            due, sid, step, r = p
            if due > now or self.stalled:
                keep.append(p)
                continue
            self.send(RESULT, r)
            self.results += 1
            if self.a.stall_after is not None and self.results >= self.a.stall_after:
                self.stalled = True
            if self.a.bye_after is not None and self.results >= self.a.bye_after:
                self.send(BYE)
                time.sleep(0.05)
                os._exit(0)
        self.pending = keep

    def run(self):
        zmq = self.zmq
        self.connect()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while True:
            if self.stalled:
                time.sleep(3600)
                continue
            now = time.monotonic()
            waits = [self.last_send + self.hb_ms / 1e3 - now]
            if self.pending:
                waits.append(min(p[0] for p in self.pending) - now)
            timeout = max(0, min(waits))
            events = dict(poller.poll(timeout * 1000))
            if self.sock in events:
                while True:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.last_recv = time.monotonic()
                    self.handle(frames)
            now = time.monotonic()
            self.flush(now)
            if self.stalled:
                continue
            if now - self.last_send >= self.hb_ms / 1e3:
                self.send(HEARTBEAT, self.P.Heartbeat(time_ms=int(time.time() * 1000)))
            if now - self.last_recv > self.liveness * self.hb_ms / 1e3:
                # the broker is gone: reconnect after a backoff, then HELLO
                print(f"fakeworker {self.id}: broker silent; reconnecting", file=sys.stderr)
                poller.unregister(self.sock)
                time.sleep(self.backoff * random.uniform(0.8, 1.2))
                self.backoff = min(4.0, self.backoff * 2)
                self.connect()
                poller.register(self.sock, zmq.POLLIN)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", required=True, help="broker back end, e.g. tcp://127.0.0.1:5556")
    ap.add_argument("--model", default="fake")
    ap.add_argument("--id", default=None, help="worker_id (default host:pid:fake)")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--eos", type=int, default=-1)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--max-sessions", type=int, default=64)
    ap.add_argument("--heartbeat-ms", type=int, default=500)
    ap.add_argument("--delay-ms", type=float, default=0)
    ap.add_argument("--die-after", type=int, default=None)
    ap.add_argument("--stall-after", type=int, default=None)
    ap.add_argument("--bye-after", type=int, default=None)
    ap.add_argument("--kv-sessions", type=int, default=0)
    ap.add_argument("--events", default=None, help="append received messages to this file")
    a = ap.parse_args()
    w = FakeWorker(a)

    def stall(sig, frame):
        w.stalled = True
    signal.signal(signal.SIGUSR1, stall)
    signal.signal(signal.SIGTERM, lambda s, f: os._exit(0))
    try:
        w.run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
