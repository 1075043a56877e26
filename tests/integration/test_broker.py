#!/usr/bin/env python3
"""itt-broker against fake workers (fakeworker.py): the broker alone.

Checks, one line each: registration and STATS; streaming order and
completeness (tokens equal the fake worker's deterministic sequence); the
end conditions eos, length, stop (held-back text, flush at the end),
context, max_tokens 0; 8 concurrent clients; bad input on the front end
(garbage frames, wrong version, unknown command, oversized message,
malformed protobuf, negative max_tokens, top_p 2, unknown model, over-long
prompt_tokens, ...) answered with the right code while another client's
stream goes on unharmed; garbage on the back end; queue full -> OVERLOADED
at once, priority order, heartbeats to a waiting client; deadline; cancel;
a client that disconnects or goes silent; a worker killed (kill -9), stalled,
leaving (BYE) or out of KV memory mid-stream -> the stream completes
identically; broker restart -> the worker re-registers; idempotent
re-SUBMIT; API keys.  When itt-worker, itt and $ITT_MODEL_DIR are there, one
more check runs the real worker on stories260K: a greedy stream whose worker
is killed mid-way, and a seeded sampled one, equal `itt generate --local`.
Every process is on 127.0.0.1 with free ports and is killed at the end.
"""
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from itt_test import SKIP, TMP, Checks, model, run, tool

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fakeworker as F  # noqa: E402

try:
    import zmq
    P = F.pb()
except ImportError as e:
    print(f"SKIP: {e} (python3-zmq, python3-protobuf and ITT_PY_DIR are needed)")
    sys.exit(SKIP)
if not os.path.exists(tool("itt-broker")):
    print(f"SKIP: {tool('itt-broker')} is not built")
    sys.exit(SKIP)

CTX = zmq.Context()
PROCS = []
ACTIVE = []
FAKE = os.path.join(HERE, "fakeworker.py")
RUN = os.path.join(TMP, f"broker-test-{os.getpid()}")
os.makedirs(RUN, exist_ok=True)
_ids = itertools.count(1)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Broker:
    def __init__(self, *flags, ports=None):
        self.fp, self.bp = ports or (free_port(), free_port())
        self.front = f"tcp://127.0.0.1:{self.fp}"
        self.back = f"tcp://127.0.0.1:{self.bp}"
        self.logpath = os.path.join(RUN, f"broker-{self.fp}-{next(_ids)}.log")
        self.proc = subprocess.Popen(
            [tool("itt-broker"), "--front", self.front, "--back", self.back, *flags],
            stderr=open(self.logpath, "w"))
        PROCS.append(self.proc)
        self.admin = Client(self)

    def stats(self, timeout=3.0, key=None):
        self.admin.send(F.STATS, P.StatsRequest(api_key=key) if key else b"")
        m = self.admin.next(lambda c, m: c in (F.STATS_REPLY, F.ERROR), timeout)
        return m[1] if m and m[0] == F.STATS_REPLY else None

    def wait_workers(self, model, n, timeout=15.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.stats()
            if s and sum(1 for w in s.workers if w.model == model) >= n:
                return s
            time.sleep(0.05)
        raise AssertionError(f"{n} workers of model {model} did not register in {timeout} s")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(5)


def start_worker(broker, model, *args, tag=None):
    events = os.path.join(RUN, f"fw-{model}-{tag or next(_ids)}.ev")
    p = subprocess.Popen([sys.executable, FAKE, "--broker", broker.back, "--model", model,
                          "--events", events, *map(str, args)],
                         stderr=open(events + ".log", "w"))
    p.events = events
    PROCS.append(p)
    return p


def events(p):
    try:
        with open(p.events) as f:
            return [ln.split() for ln in f]
    except FileNotFoundError:
        return []


def session_of(p, prompt):
    """Session id the worker was OPENed with for this text prompt, or None."""
    hx = prompt.encode().hex()
    for e in events(p):
        if e[0] == "OPEN" and len(e) > 4 and e[4] == hx:
            return int(e[1])
    return None


def wait_event(p, pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for e in events(p):
            if pred(e):
                return e
        beat_all()
        time.sleep(0.02)
    return None


def beat_all():
    """Clients send HEARTBEAT at least every 0.4 s, as the protocol asks."""
    now = time.monotonic()
    for c in ACTIVE:
        if not c.silent and now - c.last > 0.4:
            c.send(F.HEARTBEAT, P.Heartbeat(time_ms=int(time.time() * 1000)))


PARSE = {F.CHUNK: P.StreamChunk, F.DONE: P.StreamDone, F.ERROR: P.Error,
         F.STATS_REPLY: P.ClusterStats, F.HEARTBEAT: P.Heartbeat}


class Stream:
    def __init__(self):
        self.chunks, self.done, self.error = [], None, None

    def tokens(self):
        return [t for c in self.chunks for t in c.tokens]

    def text(self):
        return b"".join(c.text for c in self.chunks)


class Client:
    def __init__(self, broker, cid=None):
        self.s = CTX.socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.connect(broker.front if isinstance(broker, Broker) else broker)
        self.cid = cid or f"client-{next(_ids)}"
        self.last = 0.0
        self.silent = False
        self.inbox = []
        self.heartbeats = 0
        ACTIVE.append(self)

    def raw(self, frames):
        self.s.send_multipart(frames)
        self.last = time.monotonic()

    def send(self, cmd, body=b""):
        if not isinstance(body, bytes):
            body = body.SerializeToString()
        self.raw([F.SIG, bytes([cmd]), body])

    def submit(self, rid, model, **kw):
        self.send(F.SUBMIT, P.GenerateRequest(request_id=rid, client_id=self.cid, model=model,
                                              **kw))

    def cancel(self, rid, cid=None):
        self.send(F.CANCEL, P.Cancel(request_id=rid, client_id=cid or self.cid))

    def close(self):
        self.s.close(0)
        ACTIVE.remove(self)

    def pump(self, timeout_ms):
        if self.s.poll(timeout_ms):
            while True:
                try:
                    fr = self.s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                assert len(fr) == 3 and fr[0] == F.SIG, f"bad frames from the broker: {fr!r}"
                cmd = fr[1][0]
                if cmd == F.HEARTBEAT:
                    self.heartbeats += 1
                    continue
                self.inbox.append((cmd, PARSE[cmd].FromString(fr[2])))

    def next(self, pred, timeout=3.0):
        end = time.monotonic() + timeout
        while True:
            for i, (c, m) in enumerate(self.inbox):
                if pred(c, m):
                    return self.inbox.pop(i)
            if time.monotonic() >= end:
                return None
            beat_all()
            self.pump(20)

    def reply(self, rid=None, timeout=3.0):
        """The next ERROR (for rid when given)."""
        m = self.next(lambda c, m: c == F.ERROR and (rid is None or m.request_id == rid),
                      timeout)
        assert m, f"no ERROR reply within {timeout} s"
        return m[1]

    def stream(self, rid, timeout=20.0, st=None, stop_after=None):
        """Chunks of rid until DONE/ERROR (or stop_after chunks)."""
        st = st or Stream()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = self.next(lambda c, m: c in (F.CHUNK, F.DONE, F.ERROR) and
                          m.request_id == rid, end - time.monotonic())
            if not m:
                break
            c, msg = m
            if c == F.CHUNK:
                st.chunks.append(msg)
                if stop_after and len(st.chunks) >= stop_after:
                    return st
            elif c == F.DONE:
                st.done = msg
                return st
            else:
                st.error = msg
                return st
        raise AssertionError(f"stream {rid}: no DONE/ERROR within {timeout} s "
                             f"({len(st.chunks)} chunks)")


def check_stream(st, want, reason, vocab=512):
    assert st.error is None, f"ERROR {P.Code.Name(st.error.code)}: {st.error.reason}"
    seqs = [c.seq for c in st.chunks]
    assert seqs == list(range(len(seqs))), f"seq not 0..n-1 without gaps: {seqs}"
    got = st.tokens()
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b),
                  min(len(got), len(want)))
        raise AssertionError(f"tokens differ at {at}: got {len(got)}, want {len(want)}")
    assert st.done.n_chunks == len(st.chunks), \
        f"DONE n_chunks {st.done.n_chunks} != {len(st.chunks)}"
    assert st.done.stop_reason == reason, f"stop_reason {st.done.stop_reason!r}, want {reason!r}"
    assert st.done.n_tokens == len(want), f"n_tokens {st.done.n_tokens}"


def pieces(toks):
    return b"".join(F.piece(t) for t in toks)


def expect(prompt, n, **kw):
    return F.expected_tokens(F.tokenize(prompt, 512), n, 512, **kw)[0]


# ---------------------------------------------------------------- the checks

def main():
    ck = Checks()
    B = Broker("--heartbeat-ms", "300", "--liveness", "3", "--queue-limit", "3",
               "--client-timeout-ms", "3000", "--client-heartbeat-ms", "300")
    # eos for model eosm: the 7th token of prompt "abc" (first occurrence)
    seq = expect("abc", 20)
    eos_at = next(i for i in range(6, 20) if seq[i] not in seq[:i])
    W = {
        "fake1": start_worker(B, "fake"),
        "fake2": start_worker(B, "fake"),
        "slow": start_worker(B, "slow", "--delay-ms", 20),
        "one": start_worker(B, "one", "--max-sessions", 1, "--delay-ms", 30),
        "tiny": start_worker(B, "tiny", "--ctx", 32),
        "eosm": start_worker(B, "eosm", "--eos", seq[eos_at]),
    }

    def registration():
        s = None
        for m, n in (("fake", 2), ("slow", 1), ("one", 1), ("tiny", 1), ("eosm", 1)):
            s = B.wait_workers(m, n)
        w = next(w for w in s.workers if w.model == "one")
        assert w.max_sessions == 1 and w.state == "ready" and w.n_layers == 5, str(w)
        assert w.last_heartbeat_ms < 1000, f"last heartbeat {w.last_heartbeat_ms} ms ago"
        assert any(m.name == "slow" and m.workers == 1 for m in s.models), str(s.models)
    ck.check("workers register; STATS lists them", registration)

    A = Client(B)

    def streaming():
        A.submit("s1", "fake", prompt="Once upon a time", max_tokens=40,
                 sampling=P.SamplingParams(temperature=0, seed=7))
        st = A.stream("s1")
        want = expect("Once upon a time", 40)
        check_stream(st, want, "length")
        assert st.text() == pieces(want), "text is not the concatenated pieces"
        assert list(st.done.prompt_tokens) == F.tokenize("Once upon a time", 512)
        assert st.done.seed == 7 and st.done.replays == 0, str(st.done)
        assert all(len(c.tokens) == 1 for c in st.chunks), "one token per chunk"
        t = st.done.timings
        assert 0 <= t.queue_ms <= t.first_token_ms <= t.total_ms, str(t)
    ck.check("stream: seq 0..39 in order, tokens and text complete, DONE", streaming)

    def eos():
        A.submit("e1", "eosm", prompt="abc", max_tokens=20)
        st = A.stream("e1")
        check_stream(st, seq[:eos_at], "eos")
    ck.check(f"eos token ends the stream and is not sent ({eos_at} chunks)", eos)

    def stop():
        want = expect("hello", 50)
        text = pieces(want)
        s = text[12:15].decode()
        at = text.find(s.encode())
        A.submit("t1", "fake", prompt="hello", max_tokens=50, stop=["#never", s])
        st = A.stream("t1")
        check_stream(st, want[:at + len(s)], "stop")
        assert st.text() == text[:at], f"text {st.text()!r}, want {text[:at]!r}"
        # a stop string whose prefix ends the text: held back, then flushed at the end
        s2 = text[19:20].decode() + "#"
        A.submit("t2", "fake", prompt="hello", max_tokens=20, stop=[s2])
        st = A.stream("t2")
        check_stream(st, want[:20], "length")
        assert st.text() == text[:20], f"text {st.text()!r}"
        assert st.chunks[19].text == b"" and st.chunks[-1].tokens == [], \
            "held text not flushed last"
    ck.check("stop string: never sent, text before it held back and flushed", stop)

    def context():
        ids = list(range(2, 12))
        A.submit("x1", "tiny", prompt_tokens=ids, max_tokens=100)
        st = A.stream("x1")
        want = F.expected_tokens(ids, 100, 512, ctx=32)[0]
        assert len(want) == 22, len(want)
        check_stream(st, want, "context")
        A.submit("x2", "fake", prompt="zero", max_tokens=0)
        st = A.stream("x2")
        check_stream(st, [], "length")
        assert list(st.done.prompt_tokens) == F.tokenize("zero", 512)
    ck.check("context length ends the stream; max_tokens 0", context)

    def concurrent():
        cs = [Client(B) for _ in range(8)]
        prompts = [f"client {i} says hi" for i in range(8)]
        for i, c in enumerate(cs):
            c.submit(f"k{i}", "fake" if i % 2 else "slow", prompt=prompts[i], max_tokens=30)
        sts = [Stream() for _ in cs]
        end = time.monotonic() + 20
        poller = zmq.Poller()
        for c in cs:
            poller.register(c.s, zmq.POLLIN)
        while any(s.done is None and s.error is None for s in sts):
            assert time.monotonic() < end, "8 streams did not finish in 20 s"
            beat_all()
            poller.poll(50)
            for i, c in enumerate(cs):
                c.pump(0)
                while c.inbox:
                    cmd, m = c.inbox.pop(0)
                    assert m.request_id == f"k{i}", f"client {i} got {m.request_id}'s message"
                    if cmd == F.CHUNK:
                        sts[i].chunks.append(m)
                    elif cmd == F.DONE:
                        sts[i].done = m
                    else:
                        sts[i].error = m
        for i, st in enumerate(sts):
            check_stream(st, expect(prompts[i], 30), "length")
        for c in cs:
            c.close()
    ck.check("8 concurrent clients each get their own stream", concurrent)

    def bad_front():
        A.submit("long1", "slow", prompt="the long one", max_tokens=100)
        first = A.stream("long1", stop_after=2)
        X = Client(B)
        def sub(**kw):
            kw = {"request_id": "bad", "client_id": X.cid, "model": "fake", **kw}
            return P.GenerateRequest(**kw).SerializeToString()

        def submit(**kw):
            return [F.SIG, bytes([F.SUBMIT]), sub(**kw)]

        cancel = P.Cancel(request_id="nope", client_id="c").SerializeToString()
        no_id = P.GenerateRequest(client_id="c", model="fake").SerializeToString()
        IA = P.INVALID_ARGUMENT
        cases = [
            ("garbage frame", [b"garbage"], IA, "expected 3 or 4 frames"),
            ("5 frames", [F.SIG, b"\x01", b"", b"", b""], IA, "got 5"),
            ("wrong version", [b"ITT\x02", b"\x01", sub()], P.VERSION_MISMATCH,
             "not ITT version 1"),
            ("unknown command", [F.SIG, b"\x7f", b""], P.UNIMPLEMENTED, "unknown command 0x7f"),
            ("worker command", [F.SIG, bytes([F.HELLO]), b""], P.UNIMPLEMENTED, "HELLO"),
            ("2-byte command", [F.SIG, b"\x01\x01", sub()], IA, "command frame"),
            ("tensor frame", submit() + [b"t"], IA, "no tensor"),
            ("malformed body", [F.SIG, b"\x01", b"\xff\xff\xff\xff"], IA,
             "malformed GenerateRequest"),
            ("negative max_tokens", submit(max_tokens=-1), IA, "max_tokens"),
            ("top_p 2", submit(sampling=P.SamplingParams(top_p=2)), IA, "top_p"),
            ("no request_id", [F.SIG, b"\x01", no_id], IA, "request_id"),
            ("prompt and tokens", submit(prompt="a", prompt_tokens=[1]), IA, "exclusive"),
            ("token id >= vocab", submit(prompt_tokens=[1, 512]), IA, "prompt_tokens[1]"),
            ("unknown model", submit(model="no-such-model"), P.MODEL_NOT_FOUND,
             "no-such-model"),
            ("prompt_tokens >= ctx", submit(model="tiny", prompt_tokens=[5] * 32),
             P.UNAVAILABLE, "context"),
            ("deadline too long", submit(deadline_ms=4000000), IA, "deadline_ms"),
            ("9 stop strings", submit(stop=["a"] * 9), IA, "stop"),
            ("cancel unknown", [F.SIG, bytes([F.CANCEL]), cancel], P.NOT_FOUND, "not running"),
            ("malformed cancel", [F.SIG, bytes([F.CANCEL]), b"\xff"], IA, "malformed Cancel"),
        ]
        for name, frames, code, words in cases:
            X.raw(frames)
            e = X.reply()
            assert e.code == code and words in e.reason, (
                f"{name}: got {P.Code.Name(e.code)} {e.reason!r}, "
                f"want {P.Code.Name(code)} ~{words!r}")
            if code in (P.MODEL_NOT_FOUND,) or name == "negative max_tokens":
                assert e.request_id == "bad", f"{name}: request_id {e.request_id!r} not echoed"
        # over 1 MiB: ZeroMQ drops it and disconnects that peer; nothing else changes
        Big = Client(B)
        Big.raw([F.SIG, b"\x01", b"x" * ((1 << 20) + 100)])
        time.sleep(0.3)
        assert B.stats() is not None, "broker stopped answering after an oversized message"
        assert B.proc.poll() is None, "broker died"
        Big.close()
        st = A.stream("long1", st=first)
        check_stream(st, expect("the long one", 100), "length")
        X.close()
    ck.check("bad input on the front end: right code and reason, other stream unharmed",
             bad_front)

    def bad_back():
        A.submit("long2", "slow", prompt="another long one", max_tokens=60)
        first = A.stream("long2", stop_after=2)
        G = CTX.socket(zmq.DEALER)
        G.setsockopt(zmq.LINGER, 0)
        G.connect(B.back)

        def ask(frames, want_cmd=F.ERROR, timeout=2.0):
            G.send_multipart(frames)
            if not G.poll(int(timeout * 1000)):
                return None
            fr = G.recv_multipart()
            while fr[1][0] == F.HEARTBEAT and G.poll(int(timeout * 1000)):
                fr = G.recv_multipart()
            return fr[1][0], fr[2]

        def err(frames, code, words):
            r = ask(frames)
            assert r and r[0] == F.ERROR, f"{frames[:2]!r}: no ERROR, got {r!r}"
            e = P.Error.FromString(r[1])
            assert e.code == code and words in e.reason, f"got {P.Code.Name(e.code)} {e.reason!r}"

        res = P.StepResult(session_id=1, step=0, token=5, piece=b"x").SerializeToString()
        err([b"junk"], P.INVALID_ARGUMENT, "frames")
        err([F.SIG, bytes([F.RESULT]), res], P.NOT_FOUND, "unknown worker")
        err([F.SIG, bytes([F.HEARTBEAT]), b""], P.NOT_FOUND, "unknown worker")
        err([F.SIG, bytes([F.HELLO]), b"\xff\xff"], P.INVALID_ARGUMENT, "malformed WorkerHello")
        hello = dict(worker_id="garbage-1", host="h", model="garbage", layer_first=0,
                     layer_last=5, n_layers=5, vocab=512, ctx_len=64, dim=64, eos_token=-1,
                     max_sessions=4)
        bad = dict(hello, vocab=0)
        err([F.SIG, bytes([F.HELLO]), P.WorkerHello(**bad).SerializeToString()],
            P.INVALID_ARGUMENT, "vocab")
        bad = dict(hello, layer_first=5)
        err([F.SIG, bytes([F.HELLO]), P.WorkerHello(**bad).SerializeToString()],
            P.INVALID_ARGUMENT, "layers")
        bad = dict(hello, layer_last=6)
        err([F.SIG, bytes([F.HELLO]), P.WorkerHello(**bad).SerializeToString()],
            P.INVALID_ARGUMENT, "layers")
        bad = dict(hello, dim=0)
        err([F.SIG, bytes([F.HELLO]), P.WorkerHello(**bad).SerializeToString()],
            P.INVALID_ARGUMENT, "dim")
        bad = dict(hello, model="slow", vocab=100)
        err([F.SIG, bytes([F.HELLO]), P.WorkerHello(**bad).SerializeToString()],
            P.INVALID_ARGUMENT, "vocab 512")
        r = ask([F.SIG, bytes([F.HELLO]), P.WorkerHello(**hello).SerializeToString()])
        assert r and r[0] == F.WELCOME, f"no WELCOME: {r!r}"
        err([F.SIG, bytes([F.RESULT]), b"\xff\xff\xff"], P.INVALID_ARGUMENT, "malformed StepResult")
        err([F.SIG, b"\x7f", b""], P.UNIMPLEMENTED, "0x7f")
        err([F.SIG, bytes([F.SUBMIT]), b""], P.UNIMPLEMENTED, "SUBMIT")
        # try to hijack every session: RESULTs and ERRORs for ids it does not own
        for sid in range(1, 200):
            G.send_multipart([F.SIG, bytes([F.RESULT]), P.StepResult(
                session_id=sid, step=1, token=7, piece=b"!").SerializeToString()])
            G.send_multipart([F.SIG, bytes([F.ERROR]), P.Error(
                session_id=sid, code=P.INTERNAL, reason="lies").SerializeToString()])
        st = A.stream("long2", st=first)
        check_stream(st, expect("another long one", 60), "length")
        assert st.done.replays == 0, f"{st.done.replays} replays"
        G.close(0)
    ck.check("garbage and hijack attempts on the back end disturb no session", bad_back)

    def queue():
        one = W["one"]
        A.submit("q0", "one", prompt="q0 runs", max_tokens=1000)
        A.stream("q0", stop_after=1)
        Q = Client(B)
        Q.submit("q1", "one", prompt="q1 low", max_tokens=5)
        Q.submit("q2", "one", prompt="q2 high", max_tokens=5, priority=5)
        Q.submit("q3", "one", prompt="q3 low", max_tokens=5)
        end = time.monotonic() + 3
        while True:
            s = B.stats()
            m = next(m for m in s.models if m.name == "one")
            if m.queued == 3:
                break
            assert time.monotonic() < end, f"queued {m.queued}"
        t0 = time.monotonic()
        Q.submit("q4", "one", prompt="q4 too many", max_tokens=5)
        e = Q.reply("q4")
        dt = (time.monotonic() - t0) * 1e3
        assert e.code == P.OVERLOADED and "queue full (3 waiting)" in e.reason, str(e)
        assert dt < 300, f"OVERLOADED after {dt:.0f} ms"
        # a client with only waiting requests hears HEARTBEATs from the broker
        hb0 = Q.heartbeats
        Q.next(lambda c, m: False, 1.0)
        assert Q.heartbeats > hb0, "no HEARTBEAT to a waiting client in 1 s"
        A.cancel("q0")
        e = A.reply("q0")
        assert e.code == P.CANCELLED, str(e)
        st = Q.stream("q2")
        check_stream(st, expect("q2 high", 5), "length")
        opens = [bytes.fromhex(e[4]).decode() for e in events(one) if e[0] == "OPEN"]
        after = opens[opens.index("q0 runs") + 1:]
        assert after[:1] == ["q2 high"], f"the higher priority did not go first: {after}"
        for rid, p in (("q1", "q1 low"), ("q3", "q3 low")):
            check_stream(Q.stream(rid), expect(p, 5), "length")
        print(f"     OVERLOADED answered in {dt:.1f} ms")
        Q.close()
    ck.check("queue full: OVERLOADED at once; priority order; heartbeats while waiting",
             queue)

    def deadline():
        t0 = time.monotonic()
        A.submit("d1", "slow", prompt="deadline", max_tokens=1000, deadline_ms=300)
        st = A.stream("d1")
        dt = (time.monotonic() - t0) * 1e3
        assert st.error and st.error.code == P.DEADLINE_EXCEEDED, "no DEADLINE_EXCEEDED"
        assert 250 < dt < 1500, f"after {dt:.0f} ms"
        assert st.done is None and len(st.chunks) > 3
        sid = session_of(W["slow"], "deadline")
        closed = ["CLOSE", str(sid), str(P.DEADLINE_EXCEEDED)]
        assert wait_event(W["slow"], lambda e: e[:3] == closed), "the worker got no CLOSE"
    ck.check("deadline: DEADLINE_EXCEEDED and the worker gets CLOSE", deadline)

    def cancel():
        A.submit("c1", "slow", prompt="cancel me", max_tokens=1000)
        A.stream("c1", stop_after=3)
        A.cancel("c1")
        st = A.stream("c1")
        assert st.error and st.error.code == P.CANCELLED and st.done is None, "no CANCELLED"
        sid = session_of(W["slow"], "cancel me")
        assert wait_event(W["slow"], lambda e: e[:3] == ["CLOSE", str(sid), str(P.CANCELLED)]), \
            "the worker got no CLOSE"
        A.cancel("c1")
        assert A.reply("c1").code == P.NOT_FOUND
    ck.check("cancel: CANCELLED, CLOSE to the worker, second cancel NOT_FOUND", cancel)

    def client_gone():
        C = Client(B)
        C.submit("g1", "slow", prompt="gone client", max_tokens=1000)
        C.stream("g1", stop_after=3)
        t0 = time.monotonic()
        C.close()
        sid = session_of(W["slow"], "gone client")
        assert wait_event(W["slow"], lambda e: e[:2] == ["CLOSE", str(sid)], 3), "no CLOSE"
        dt1 = (time.monotonic() - t0) * 1e3
        S = Client(B)
        S.submit("g2", "slow", prompt="silent client", max_tokens=1000)
        S.stream("g2", stop_after=3)
        S.silent = True
        t0 = time.monotonic()
        sid = session_of(W["slow"], "silent client")
        assert wait_event(W["slow"], lambda e: e[:3] == ["CLOSE", str(sid), str(P.CANCELLED)], 8), \
            "no CLOSE for a silent client"
        dt2 = (time.monotonic() - t0) * 1e3
        assert 2500 < dt2 < 5000, f"silent client dropped after {dt2:.0f} ms (timeout 3000)"
        S.close()
        print(f"     disconnected client's session closed in {dt1:.0f} ms, "
              f"silent one in {dt2:.0f} ms")
    ck.check("a client that disconnects or goes silent: its session is closed", client_gone)

    def owner(ws, prompt):
        for w in ws:
            if session_of(w, prompt) is not None:
                return w
        return None

    def replay(model, prompt, n, fault, replays=1):
        A.submit("rp-" + prompt, model, prompt=prompt, max_tokens=n)
        st = A.stream("rp-" + prompt, stop_after=10)
        t0 = time.monotonic()
        fault(prompt)
        st = A.stream("rp-" + prompt, st=st, timeout=20)
        check_stream(st, expect(prompt, n), "length")
        assert len(set(c.seq for c in st.chunks)) == len(st.chunks), "a chunk repeated"
        assert st.done.replays == replays, f"replays {st.done.replays}"
        return (time.monotonic() - t0) * 1e3

    def killed():
        ws = [start_worker(B, "dual", "--delay-ms", 15) for _ in range(2)]
        B.wait_workers("dual", 2)

        def kill(prompt):
            w = owner(ws, prompt)
            assert w, "no worker opened the session"
            w.kill()
            w.wait()
        dt = replay("dual", "kill the owner", 80, kill)
        print(f"     stream resumed and finished {dt:.0f} ms after kill -9")
        W["dual"] = [w for w in ws if w.poll() is None]
    ck.check("worker killed mid-stream: the stream completes identically", killed)

    def stalled():
        ws = W["dual"] + [start_worker(B, "dual", "--delay-ms", 15)]
        B.wait_workers("dual", 2)

        def stall(prompt):
            w = owner(ws, prompt)
            assert w, "no worker opened the session"
            w.send_signal(signal.SIGUSR1)
        replay("dual", "stall the owner", 60, stall)
        s = B.stats()
        assert sum(1 for w in s.workers if w.model == "dual") == 1, "stalled worker not expired"
    ck.check("worker stalls mid-stream: expired, the stream completes identically", stalled)

    def bye():
        start_worker(B, "byem", "--bye-after", 6)
        B.wait_workers("byem", 1)
        start_worker(B, "byem")
        B.wait_workers("byem", 2)
        replay("byem", "bye bye", 40, lambda p: None)
    ck.check("worker says BYE mid-stream: the stream moves and completes", bye)

    def overloaded():
        start_worker(B, "kvm", "--kv-sessions", 1, "--delay-ms", 5)
        B.wait_workers("kvm", 1)
        A.submit("o1", "kvm", prompt="first", max_tokens=30)
        A.submit("o2", "kvm", prompt="second", max_tokens=30)
        check_stream(A.stream("o1"), expect("first", 30), "length")
        check_stream(A.stream("o2"), expect("second", 30), "length")
    ck.check("worker answers OPEN with OVERLOADED: requeued, completes later", overloaded)

    def idempotent():
        S1 = Client(B, cid="idem")
        S1.submit("r-idem", "slow", prompt="idempotent", max_tokens=30)
        S1.stream("r-idem", stop_after=5)
        S1.close()
        S2 = Client(B, cid="idem")
        S2.submit("r-idem", "slow", prompt="idempotent", max_tokens=30)
        st = S2.stream("r-idem")
        check_stream(st, expect("idempotent", 30), "length")
        hx = "idempotent".encode().hex()
        opens = [e for e in events(W["slow"]) if e[0] == "OPEN" and e[4] == hx]
        assert len(opens) == 1, f"{len(opens)} OPENs: a new generation started"
        S3 = Client(B, cid="idem")
        S3.submit("r-idem", "slow", prompt="idempotent", max_tokens=30)
        st3 = S3.stream("r-idem", timeout=2)
        check_stream(st3, expect("idempotent", 30), "length")
        assert st3.done.seed == st.done.seed
        S2.close()
        S3.close()
    ck.check("idempotent re-SUBMIT: same stream from seq 0, running and ended", idempotent)

    def restart():
        R = Broker("--heartbeat-ms", "200")
        w = start_worker(R, "rs")
        R.wait_workers("rs", 1)
        rc = R.stop()
        assert rc == 0, f"broker exit code {rc} on SIGTERM"
        t0 = time.monotonic()
        R2 = Broker("--heartbeat-ms", "200", ports=(R.fp, R.bp))
        R2.wait_workers("rs", 1, timeout=10)
        dt = (time.monotonic() - t0) * 1e3
        C = Client(R2)
        C.submit("after", "rs", prompt="after restart", max_tokens=10)
        check_stream(C.stream("after"), expect("after restart", 10), "length")
        C.close()
        assert w.poll() is None
        print(f"     worker registered again {dt:.0f} ms after the restart")
        R2.stop()
    ck.check("broker restarted: the worker re-registers and serves", restart)

    def api_keys():
        K = Broker("--api-key", "secret", "--api-key", "other")
        C = Client(K)
        C.submit("k1", "fake", prompt="x")
        e = C.reply("k1")
        assert e.code == P.UNAUTHENTICATED, str(e)
        C.submit("k2", "fake", prompt="x", api_key="wrong")
        assert C.reply("k2").code == P.UNAUTHENTICATED
        C.submit("k3", "fake", prompt="x", api_key="other")
        assert C.reply("k3").code == P.MODEL_NOT_FOUND
        assert K.stats() is None, "STATS without a key answered"
        assert K.stats(key="secret") is not None, "STATS with a key not answered"
        C.close()
        K.stop()
    ck.check("API keys: SUBMIT and STATS need one", api_keys)

    def real_worker():
        path = model("stories260K.gguf")
        if not path:
            return SKIP
        for b in ("itt-worker", "itt"):
            if not os.path.exists(tool(b)):
                print(f"     SKIP: {tool(b)} is not built")
                return SKIP
        ws = [subprocess.Popen([tool("itt-worker"), "--broker", B.back, "--model", path,
                                "--slow-ms", "10", "--log-level", "warn"],
                               stderr=open(os.path.join(RUN, f"itt-worker-{i}.log"), "w"))
              for i in range(2)]
        PROCS.extend(ws)
        B.wait_workers("stories260K", 2)
        for name, temp, seed, kill in (("greedy", 0, 1, True), ("sampled", 0.8, 42, False)):
            ref = json.loads(run([tool("itt"), "generate", "--local", path, "--temperature",
                                  str(temp), "--seed", str(seed), "-n", "120", "--json",
                                  "--prompt", "Once upon a time"]).stdout)
            rid = f"real-{name}"
            A.submit(rid, "stories260K", prompt="Once upon a time", max_tokens=120,
                     sampling=P.SamplingParams(temperature=temp, seed=seed))
            st = A.stream(rid, stop_after=20)
            if kill:
                s = B.stats()
                own = next(w for w in s.workers if w.model == "stories260K" and w.sessions)
                victim = next(p for p in ws if p.pid == int(own.id.split(":")[1]))
                victim.kill()
                victim.wait()
            st = A.stream(rid, st=st, timeout=30)
            check_stream(st, ref["tokens"], ref["stop_reason"])
            assert st.text().decode() == ref["text"], f"{name}: text differs"
            assert list(st.done.prompt_tokens) == ref["prompt_tokens"]
            assert st.done.replays == (1 if kill else 0), f"replays {st.done.replays}"
        for p in ws:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(5)
    ck.check("real itt-worker on stories260K: streams equal the local CLI, also after kill -9",
             real_worker)

    def final_stats():
        s = B.stats()
        assert s.requests > 20 and s.completed > 15 and s.failed >= 4, str(s)[:300]
        f = [w for w in s.workers if w.model == "fake"]
        assert sum(w.steps for w in f) > 100 and all(w.sessions == 0 for w in f)
        assert B.proc.poll() is None, "broker died"
        assert B.stop() == 0, "broker did not exit 0 on SIGTERM"
    ck.check("STATS counters; broker alive and exits 0 on SIGTERM", final_stats)
    return ck


if __name__ == "__main__":
    ck = None
    try:
        ck = main()
    finally:
        for c in list(ACTIVE):
            c.close()
        for p in PROCS:
            if p.poll() is None:
                p.kill()
            p.wait()
        CTX.term()
    if ck.failed:
        print(f"logs in {RUN}")
    else:
        shutil.rmtree(RUN, ignore_errors=True)
    ck.finish()
