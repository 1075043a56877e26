#!/usr/bin/env python3
"""itt-coordinator against a fake broker: the control plane alone.

The fake broker (a ROUTER on a free 127.0.0.1 port) speaks the broker side
of PROTOCOL.md "Coordinator": it answers CONTROL_HELLO with WELCOME and a
WORKER_UP per fake worker, sends HEARTBEAT every 200 ms and every worker's
TELEMETRY every second, and plays the workers' part of a move: a PLACE
changes the worker's range and, 100 ms later, a WORKER_UP shows it.  SETs
change the fake workers' settings (a SET of a pinned knob is answered with
ERROR, as the broker does, and fails the check).

The cluster: a 5-layer model "tiny5" (one sha256), workers w1 and w2 on
host hA (8 cores), w3 on host hB (4 cores, threads and batch_tokens
pinned), the coordinator forced to 3 stages per route.  Checks, one line
each: --help and --print-config; the initial placement (PLACE within 2 s,
one route w1 > w2 > w3 of 2 + 2 + 1 layers, ROUTES once the WORKER_UPs show
it); threads = cores / workers per host, never for the pinned w3; a worker
joining (PLACE within 2 s, reason "joined") and leaving (back to 3
stages); the batch budget lowered on w2 whose steps take 250 ms > 100 ms;
a worker whose ms_per_row_layer becomes 10x the others losing layers after
--hold-s, with a reason naming the slowdown; a restarted coordinator
sending no PLACE against ranges that already form the planned route;
malformed messages and ERRORs from the broker logged, nothing moved; a
broker gone silent -> a new CONTROL_HELLO.
"""
import os
import signal
import socket
import subprocess
import sys
import time

from itt_test import SKIP, TMP, Checks, tool

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

try:
    import zmq
    import fakeworker as F
    P = F.pb()
except ImportError as e:
    print(f"SKIP: {e} (python3-zmq, python3-protobuf and ITT_PY_DIR are needed)")
    sys.exit(SKIP)
COORD = tool("itt-coordinator")
if not os.access(COORD, os.X_OK):
    print(f"SKIP: {COORD} is not built")
    sys.exit(SKIP)

SIG = b"ITT\x01"
ERROR, HEARTBEAT, WELCOME, TELEMETRY = 0x04, 0x06, 0x11, 0x17
CONTROL_HELLO, WORKER_UP, WORKER_DOWN, PLACE, ROUTES, SET = 0x20, 0x21, 0x22, 0x23, 0x24, 0x25
NAMES = {CONTROL_HELLO: "CONTROL_HELLO", PLACE: "PLACE", ROUTES: "ROUTES", SET: "SET",
         HEARTBEAT: "HEARTBEAT"}
BODY = {CONTROL_HELLO: "ControlHello", PLACE: "Placement", ROUTES: "RouteTable",
        SET: "SettingsChange", HEARTBEAT: "Heartbeat"}
MODEL, N_LAYERS, SHA = "tiny5", 5, "ab" * 32
HB_MS = 200
FLAGS = ["--stages", "3", "--interval-ms", "250", "--hold-s", "2", "--cooldown-s", "1",
         "--tpot-ms", "100", "--min-gain", "0.25", "--log-level", "debug"]
RUN = os.path.join(TMP, f"coord-test-{os.getpid()}")
os.makedirs(RUN, exist_ok=True)
PROCS = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Worker:
    def __init__(self, wid, host, cores, pinned=(), step_ms=40.0):
        self.id, self.host, self.cores = wid, host, cores
        self.first, self.last = 0, N_LAYERS
        self.threads, self.batch = 1, 64
        self.pinned = list(pinned)
        self.step_ms, self.rows = step_ms, 8.0
        self.ms_prl = 1.0
        self.steps = 0

    def hello(self):
        return P.WorkerHello(
            worker_id=self.id, host=self.host, pid=1, model=MODEL, layer_first=self.first,
            layer_last=self.last, n_layers=N_LAYERS, vocab=512, ctx_len=256, dim=64,
            eos_token=2, max_sessions=16, threads=self.threads, cores=self.cores,
            mem_bytes=8 << 30, mem_available=4 << 30, weight_bytes=5 << 20,
            max_batch_tokens=256,
            files=[P.ModelFile(model=MODEL, sha256=SHA, bytes=5 << 20, n_layers=N_LAYERS)],
            settings=P.Settings(threads=self.threads, batch_tokens=self.batch, slow_ms=0))

    def telemetry(self):
        self.steps += 10
        return P.Telemetry(
            worker_id=self.id, time_ms=int(time.time() * 1000), layer_first=self.first,
            layer_last=self.last, steps=self.steps, rows=self.steps * 8,
            step_ms=self.step_ms, rows_per_step=self.rows, tokens_per_s=80, busy=0.5,
            sessions=2, cores=self.cores, pinned=self.pinned, ms_per_row_layer=self.ms_prl,
            settings=P.Settings(threads=self.threads, batch_tokens=self.batch, slow_ms=0),
            state="ready")


class FakeBroker:
    """The broker's back end as the coordinator sees it (one coordinator)."""

    def __init__(self, workers):
        self.ctx = zmq.Context.instance()
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)
        self.workers = {w.id: w for w in workers}
        self.coord = None
        self.log = []          # (monotonic time, command, body) from the coordinator
        self.errors = []       # ERRORs we sent (pinned knobs)
        self.ups = []          # (due, worker id) WORKER_UPs to send
        self.silent = False    # stop heartbeats (and everything else)
        self.next_hb = self.next_tel = 0.0

    def send(self, cmd, msg=None):
        if self.coord is None or self.silent:
            return
        body = msg.SerializeToString() if msg is not None else b""
        self.sock.send_multipart([self.coord, SIG, bytes([cmd]), body])

    def up(self, w):
        self.send(WORKER_UP, w.hello())

    def down(self, wid, reason="expired"):
        self.workers.pop(wid)
        self.send(WORKER_DOWN, P.WorkerDown(worker_id=wid, reason=reason))

    def handle(self, ident, cmd, body):
        now = time.monotonic()
        name = BODY.get(cmd)
        msg = getattr(P, name).FromString(body) if name else None
        self.log.append((now, cmd, msg))
        if cmd == CONTROL_HELLO:
            self.coord = ident
            self.send(WELCOME, P.Welcome(heartbeat_ms=HB_MS, liveness=3))
            for w in self.workers.values():
                self.up(w)
        elif cmd == PLACE:
            w = self.workers.get(msg.worker_id)
            if w:
                w.first, w.last = msg.layer_first, msg.layer_last
                self.ups.append((now + 0.1, w.id))
        elif cmd == SET:
            w = self.workers.get(msg.worker_id)
            if not w:
                return
            for knob in ("threads", "batch_tokens"):
                if msg.settings.HasField(knob):
                    if knob in w.pinned:
                        err = f"knob {knob} of worker {w.id} is pinned"
                        self.errors.append(err)
                        self.send(ERROR, P.Error(code=P.INVALID_ARGUMENT, reason=err))
                    elif knob == "threads":
                        w.threads = msg.settings.threads
                    else:
                        w.batch = msg.settings.batch_tokens

    def pump(self, seconds):
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if now >= end:
                return
            if self.sock.poll(min(20, int((end - now) * 1000) + 1)):
                while True:
                    try:
                        f = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(f) == 4 and f[1] == SIG and len(f[2]) == 1:
                        self.handle(f[0], f[2][0], f[3])
            now = time.monotonic()
            for due, wid in [u for u in self.ups if u[0] <= now]:
                self.ups.remove((due, wid))
                if wid in self.workers:
                    self.up(self.workers[wid])
            if now >= self.next_hb:
                self.send(HEARTBEAT, P.Heartbeat(time_ms=int(time.time() * 1000)))
                self.next_hb = now + HB_MS / 1000
            if now >= self.next_tel:
                for w in self.workers.values():
                    self.send(TELEMETRY, w.telemetry())
                self.next_tel = now + 1.0

    def since(self, t, cmd):
        return [m for (at, c, m) in self.log if at >= t and c == cmd]

    def wait(self, t, cmd, pred, timeout):
        """The first message cmd since t matching pred, pumping up to timeout s."""
        end = time.monotonic() + timeout
        while True:
            for m in self.since(t, cmd):
                if pred(m):
                    return m
            if time.monotonic() >= end:
                return None
            self.pump(0.05)

    def ranges(self):
        return {w.id: (w.first, w.last) for w in self.workers.values()}


class Coordinator:
    def __init__(self, endpoint, tag):
        self.logpath = os.path.join(RUN, f"coord-{tag}.log")
        self.proc = subprocess.Popen([COORD, "--broker", endpoint, *FLAGS],
                                     stderr=open(self.logpath, "w"))
        PROCS.append(self.proc)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(5)

    def text(self):
        with open(self.logpath) as f:
            return f.read()


def tiles(order, ranges):
    at = 0
    for wid in order:
        if ranges[wid][0] != at:
            return False
        at = ranges[wid][1]
    return at == N_LAYERS


def main():
    ck = Checks()

    def help_text():
        r = subprocess.run([COORD, "--help"], capture_output=True, timeout=10)
        assert r.returncode == 0, r.returncode
        out = r.stdout.decode()
        for flag in ("--broker", "--stages", "--tpot-ms", "--interval-ms", "--hold-s",
                     "--min-gain", "--cooldown-s", "--log-level", "--decisions",
                     "--print-config"):
            assert flag in out, f"{flag} missing from --help"
        r = subprocess.run([COORD, "--print-config", "--stages", "2"], capture_output=True,
                           timeout=10)
        assert r.returncode == 0 and b"stages = 2" in r.stdout, r.stdout
        r = subprocess.run([COORD, "--stages", "99"], capture_output=True, timeout=10)
        assert r.returncode == 2, r.returncode
    ck.check("--help names every flag; --print-config; a bad value exits 2", help_text)

    W = [Worker("w1", "hA", 8), Worker("w2", "hA", 8, step_ms=250.0),
         Worker("w3", "hB", 4, pinned=("threads", "batch_tokens"), step_ms=250.0)]
    B = FakeBroker(W)
    C = Coordinator(B.endpoint, "first")
    t0 = time.monotonic()

    def initial():
        assert B.wait(t0, CONTROL_HELLO, lambda m: True, 5), "no CONTROL_HELLO in 5 s"
        t_up = time.monotonic()
        B.pump(2.0)
        places = B.since(t_up, PLACE)
        assert places, "no PLACE within 2 s of the WORKER_UPs"
        got = {p.worker_id: (p.layer_first, p.layer_last) for p in places}
        assert got == {"w1": (0, 2), "w2": (2, 4), "w3": (4, 5)}, got
        r = B.wait(t_up, ROUTES, lambda m: True, 2)
        assert r, "no ROUTES after the placed workers showed their ranges"
        assert r.model == MODEL and [list(x.worker_ids) for x in r.routes] == \
            [["w1", "w2", "w3"]], r
        print(f"     PLACE reason: {places[0].reason}")
    ck.check("initial placement: one route w1 > w2 > w3 of 2 + 2 + 1 layers, then ROUTES",
             initial)

    def threads():
        m = B.wait(t0, SET, lambda m: m.worker_id == "w1" and m.settings.HasField("threads"), 3)
        assert m and m.settings.threads == 4, f"w1: {m}"
        m = B.wait(t0, SET, lambda m: m.worker_id == "w2" and m.settings.HasField("threads"), 3)
        assert m and m.settings.threads == 4, f"w2: {m}"
        assert "8 cores shared by 2 workers" in m.reason, m.reason
        assert not m.settings.HasField("batch_tokens"), "a SET carries only its knob"
    ck.check("threads = 8 cores / 2 workers on host hA", threads)

    def join_leave():
        w4 = Worker("w4", "hC", 2)
        B.workers["w4"] = w4
        t = time.monotonic()
        B.up(w4)
        m = B.wait(t, PLACE, lambda m: True, 2.0)
        assert m, "no PLACE within 2 s of a join"
        assert "worker w4 joined" in m.reason, m.reason
        r = B.wait(t, ROUTES, lambda m: len(m.routes) == 1 and len(m.routes[0].worker_ids) == 4,
                   3)
        assert r, "no ROUTES with a 4-stage route"
        assert tiles(["w1", "w2", "w3", "w4"], B.ranges()), B.ranges()
        t = time.monotonic()
        B.down("w4", "expired")
        m = B.wait(t, PLACE, lambda m: True, 2.0)
        assert m, "no PLACE within 2 s of a leave"
        assert "worker w4 left" in m.reason, m.reason
        r = B.wait(t, ROUTES, lambda m: [list(x.worker_ids) for x in m.routes] ==
                   [["w1", "w2", "w3"]], 3)
        assert r, "no ROUTES back to w1 > w2 > w3"
        assert B.ranges() == {"w1": (0, 2), "w2": (2, 4), "w3": (4, 5)}, B.ranges()
    ck.check("a join re-plans within 2 s (4 stages), a leave back to 3", join_leave)

    def budget():
        m = B.wait(t0, SET, lambda m: m.worker_id == "w2" and
                   m.settings.HasField("batch_tokens"), 6)
        assert m, "w2's batch_tokens was not lowered"
        assert m.settings.batch_tokens == 25, m
        assert "tpot" in m.reason, m.reason
        print(f"     SET reason: {m.reason}")
    ck.check("batch_tokens 64 -> 25 on w2 (step 250 ms > tpot 100 ms for 2 s)", budget)

    def slowdown():
        t = time.monotonic()
        B.workers["w1"].ms_prl = 10.0
        B.pump(1.5)
        assert not B.since(t, PLACE), "moved before --hold-s"
        m = B.wait(t, PLACE, lambda m: m.worker_id == "w1", 8)
        assert m, "w1 kept its layers after a 10x slowdown"
        assert (m.layer_first, m.layer_last) == (0, 1), m
        assert "w1 slowed" in m.reason and "layers [0,2) -> [0,1)" in m.reason, m.reason
        B.wait(t, ROUTES, lambda m: True, 3)
        B.pump(0.5)
        assert B.ranges() == {"w1": (0, 1), "w2": (1, 3), "w3": (3, 5)}, B.ranges()
        print(f"     PLACE reason: {m.reason}")
    ck.check("a worker 10x slower loses layers after --hold-s", slowdown)

    def pinned():
        assert not [m for m in B.since(t0, SET) if m.worker_id == "w3"], "SET to pinned w3"
        assert not B.errors, B.errors
    ck.check("no SET for the pinned knobs of w3", pinned)

    def restart():
        C.stop()
        stats = C.text()
        assert "decision:" in stats, "decisions not logged"
        before = B.ranges()
        C2 = Coordinator(B.endpoint, "second")
        t = time.monotonic()
        assert B.wait(t, CONTROL_HELLO, lambda m: True, 5), "no CONTROL_HELLO after restart"
        B.pump(4.0)
        assert not B.since(t, PLACE), [m.worker_id for m in B.since(t, PLACE)]
        assert B.ranges() == before
        assert not [m for m in B.since(t, SET) if m.settings.HasField("threads")], \
            "threads set again"
        assert "kept the current placement" in C2.text(), "adoption not logged"
        return C2
    box = {}
    ck.check("a restarted coordinator moves nothing", lambda: box.update(c=restart()) and None)

    def garbage():
        c2 = box.get("c")
        assert c2, "no second coordinator"
        coord = B.coord
        raw = [[coord, b"XYZ\x01", bytes([WORKER_UP]), b""],           # wrong version
               [coord, SIG, bytes([0x7f]), b""],                         # unknown command
               [coord, SIG, bytes([WORKER_UP]), b"\xff\xff\xff"],        # malformed body
               [coord, SIG, bytes([TELEMETRY]), b"\x0a"],                # truncated
               [coord, SIG, bytes([WORKER_UP])],                         # 2 frames
               [coord, SIG, bytes([WORKER_UP]),                          # empty range
                P.WorkerHello(worker_id="bad", model=MODEL, n_layers=5, layer_first=3,
                              layer_last=3).SerializeToString()],
               [coord, SIG, bytes([WORKER_DOWN]),
                P.WorkerDown(worker_id="nobody").SerializeToString()],
               [coord, SIG, bytes([ERROR]),
                P.Error(code=P.INVALID_ARGUMENT,
                        reason="knob threads of worker w3 is pinned").SerializeToString()]]
        t = time.monotonic()
        for f in raw:
            B.sock.send_multipart(f)
        B.pump(1.5)
        assert c2.proc.poll() is None, "the coordinator died"
        assert not B.since(t, PLACE), "garbage moved layers"
        text = c2.text()
        assert "knob threads of worker w3 is pinned" in text, "broker ERROR not logged"
        assert "bad layer range" in text, "bad WORKER_UP not reported"
    ck.check("garbage from the broker is logged and dropped; ERRORs are logged", garbage)

    def reconnect():
        t = time.monotonic()
        B.silent = True
        B.pump(1.2)  # 3 x 200 ms of silence and some
        B.silent = False
        m = B.wait(t, CONTROL_HELLO, lambda m: True, 6)
        assert m, "no new CONTROL_HELLO after the broker went silent"
        B.pump(1.0)
        assert not B.since(t, PLACE), "a reconnection moved layers"
    ck.check("a silent broker: reconnect and CONTROL_HELLO again", reconnect)
    return ck


if __name__ == "__main__":
    ck = None
    try:
        ck = main()
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
            p.wait()
    if ck.failed:
        print(f"logs in {RUN}")
    else:
        import shutil
        shutil.rmtree(RUN, ignore_errors=True)
    ck.finish()
