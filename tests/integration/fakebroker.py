"""A stand-in for the broker's back end, to drive a real itt-worker directly.

FakeBroker binds a ROUTER on 127.0.0.1 (a free port, or the one given, so a
test can "restart" the broker on the same address) and speaks the broker
side of PROTOCOL.md "Worker session": it answers HELLO with WELCOME, sends
HEARTBEAT to every registered worker every heartbeat_ms, answers any other
message from a worker it does not know with ERROR NOT_FOUND "unknown worker"
(as a restarted broker does), and lets the test send OPEN / STEP / CLOSE
(with a tensor frame for pipeline stages), SETTINGS, ASSIGN or raw frames and
read what the worker sent (a message's tensor frame, if any, is Msg.tensor).

One background thread owns the socket (ZeroMQ sockets are not thread-safe);
the test talks to it through queues.  Every message received is kept in
`log` as (monotonic time, command, decoded body); messages other than
HEARTBEAT and TELEMETRY are also put in a queue that recv() reads;
TELEMETRY goes to another that recv_telemetry() reads.

Needs ITT_PY_DIR (the generated itt_pb2) on sys.path; import after
calling add_py_path() or with that directory already there.
"""
import itertools
import os
import queue
import socket
import sys
import threading
import time

import zmq

SIG = b"ITT\x01"
SUBMIT, CHUNK, DONE, ERROR, CANCEL, HEARTBEAT = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
HELLO, WELCOME, OPEN, STEP, RESULT, CLOSE, BYE = 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16
TELEMETRY, SETTINGS, ASSIGN = 0x17, 0x18, 0x19
NAMES = {SUBMIT: "SUBMIT", CHUNK: "CHUNK", DONE: "DONE", ERROR: "ERROR", CANCEL: "CANCEL",
         HEARTBEAT: "HEARTBEAT", HELLO: "HELLO", WELCOME: "WELCOME", OPEN: "OPEN",
         STEP: "STEP", RESULT: "RESULT", CLOSE: "CLOSE", BYE: "BYE",
         TELEMETRY: "TELEMETRY", SETTINGS: "SETTINGS", ASSIGN: "ASSIGN"}


def add_py_path():
    d = os.environ.get("ITT_PY_DIR")
    if not d:
        here = os.path.dirname(os.path.abspath(__file__))
        d = os.path.join(here, "..", "..", "build", "python")
    if d not in sys.path:
        sys.path.insert(0, d)


add_py_path()
import itt_pb2 as pb  # noqa: E402

BODY = {HELLO: pb.WorkerHello, RESULT: pb.StepResult, ERROR: pb.Error,
        HEARTBEAT: pb.Heartbeat, BYE: pb.Heartbeat, WELCOME: pb.Welcome,
        OPEN: pb.SessionOpen, STEP: pb.StepRequest, CLOSE: pb.SessionClose,
        TELEMETRY: pb.Telemetry, SETTINGS: pb.Settings, ASSIGN: pb.Assign}


_wake_ids = itertools.count()


def free_port():
    """A port that was free a moment ago (bind to port 0, read, close)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Msg:
    def __init__(self, t, ident, cmd, body, frames):
        self.t, self.ident, self.cmd, self.body, self.frames = t, ident, cmd, body, frames

    @property
    def tensor(self):
        """The 4th (tensor) frame, or None."""
        return self.frames[3] if len(self.frames) == 4 else None

    def __repr__(self):
        return f"<{NAMES.get(self.cmd, self.cmd)} {self.body!s:.200}>"


class FakeBroker:
    def __init__(self, port=None, heartbeat_ms=500, liveness=3, welcome=True,
                 heartbeats=True):
        self.port = port or free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.heartbeat_ms, self.liveness = heartbeat_ms, liveness
        self.welcome, self.heartbeats = welcome, heartbeats
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # The old broker's port may linger briefly after a close: retry.
        for i in range(50):
            try:
                self.sock.bind(self.endpoint)
                break
            except zmq.ZMQError:
                if i == 49:
                    raise
                time.sleep(0.1)
        self.known = {}        # identity -> WorkerHello
        self.worker = None     # identity of the last worker that said HELLO
        self.log = []          # every Msg received, oldest first
        self.hellos = []       # Msg of every HELLO
        self.inbox = queue.Queue()
        self.telemetry = queue.Queue()  # TELEMETRY Msgs (kept out of inbox)
        self.outbox = queue.Queue()
        # The test side wakes the socket thread through an inproc pair, so
        # a STEP goes out at once rather than at the next poll timeout.
        wake = f"inproc://fakebroker-wake-{next(_wake_ids)}"
        self.wake_rx = self.ctx.socket(zmq.PAIR)
        self.wake_rx.bind(wake)
        self.wake_tx = self.ctx.socket(zmq.PAIR)
        self.wake_tx.connect(wake)
        self.wake_lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    # ---- the socket thread ------------------------------------------------

    def _send(self, ident, frames):
        try:
            self.sock.send_multipart([ident] + frames)
        except zmq.ZMQError:
            pass  # the worker is gone (ROUTER_MANDATORY)

    def _run(self):
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.wake_rx, zmq.POLLIN)
        next_hb = time.monotonic()
        while not self.stop.is_set():
            ready = dict(poller.poll(5))
            if self.wake_rx in ready:
                while True:
                    try:
                        self.wake_rx.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            if self.sock in ready:
                while True:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._on_message(frames)
            while True:
                try:
                    ident, frames = self.outbox.get_nowait()
                except queue.Empty:
                    break
                ident = ident if ident is not None else self.worker
                if ident is not None:
                    self._send(ident, frames)
            now = time.monotonic()
            if self.heartbeats and now >= next_hb:
                next_hb = now + self.heartbeat_ms / 1000
                for ident in list(self.known):
                    self._send(ident, [SIG, bytes([HEARTBEAT]), b""])
        self.sock.close(0)
        self.wake_rx.close(0)

    def _on_message(self, frames):
        now = time.monotonic()
        ident, rest = frames[0], frames[1:]
        cmd, body = None, None
        if len(rest) in (3, 4) and rest[0] == SIG and len(rest[1]) == 1:
            cmd = rest[1][0]
            cls = BODY.get(cmd)
            if cls is not None:
                body = cls()
                try:
                    body.ParseFromString(rest[2])
                except Exception:
                    body = None
        m = Msg(now, ident, cmd, body, rest)
        self.log.append(m)
        if cmd == HELLO:
            self.known[ident] = body
            self.worker = ident
            self.hellos.append(m)
            if self.welcome:
                w = pb.Welcome(heartbeat_ms=self.heartbeat_ms, liveness=self.liveness)
                self._send(ident, [SIG, bytes([WELCOME]), w.SerializeToString()])
        elif ident not in self.known and cmd != BYE:
            e = pb.Error(code=pb.NOT_FOUND, reason="unknown worker; send HELLO")
            self._send(ident, [SIG, bytes([ERROR]), e.SerializeToString()])
        if cmd == TELEMETRY:
            self.telemetry.put(m)
        elif cmd != HEARTBEAT:
            self.inbox.put(m)

    # ---- the test's side --------------------------------------------------

    def close(self):
        self.stop.set()
        self._wake()
        self.thread.join(5)
        with self.wake_lock:
            self.wake_tx.close(0)

    def _wake(self):
        with self.wake_lock:
            if not self.wake_tx.closed:
                self.wake_tx.send(b"", zmq.NOBLOCK)

    def send(self, cmd, body=None, ident=None, tensor=None):
        data = body.SerializeToString() if body is not None else b""
        frames = [SIG, bytes([cmd]), data]
        if tensor is not None:
            frames.append(bytes(tensor))
        self.send_raw(frames, ident)

    def send_raw(self, frames, ident=None):
        self.outbox.put((ident, list(frames)))
        self._wake()

    def open(self, sid, prompt=None, tokens=None, n_prompt=None, hidden=None, tensor=None,
             reply_dtype=None, ident=None, **sampling):
        """OPEN; hidden (a TensorInfo) and tensor (bytes) for a stage > 0,
        reply_dtype (pb.F32 / pb.F16) for a non-last stage."""
        o = pb.SessionOpen(session_id=sid)
        if prompt is not None:
            o.prompt = prompt
        if tokens is not None:
            o.tokens.extend(tokens)
        if n_prompt is not None:
            o.n_prompt = n_prompt
        if hidden is not None:
            o.hidden.CopyFrom(hidden)
        if reply_dtype is not None:
            o.reply_dtype = reply_dtype
        sp = pb.SamplingParams(**sampling)
        o.sampling.CopyFrom(sp)
        self.send(OPEN, o, ident, tensor)

    def step(self, sid, step, tokens, hidden=None, tensor=None, ident=None):
        r = pb.StepRequest(session_id=sid, step=step, tokens=list(tokens))
        if hidden is not None:
            r.hidden.CopyFrom(hidden)
        self.send(STEP, r, ident, tensor)

    def close_session(self, sid, ident=None):
        self.send(CLOSE, pb.SessionClose(session_id=sid), ident)

    def recv(self, cmds=None, timeout=10.0):
        """The next message (other than HEARTBEAT) whose command is in cmds
        (any when None), skipping others; None on timeout."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            try:
                m = self.inbox.get(timeout=left)
            except queue.Empty:
                return None
            if cmds is None or m.cmd in cmds:
                return m

    def recv_telemetry(self, timeout=10.0, ident=None):
        """The next TELEMETRY (from ident, when given); None on timeout."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            try:
                m = self.telemetry.get(timeout=left)
            except queue.Empty:
                return None
            if ident is None or m.ident == ident:
                return m

    def wait_hello(self, timeout=10.0):
        return self.recv({HELLO}, timeout)

    def heartbeat_times(self, ident=None):
        return [m.t for m in list(self.log)
                if m.cmd == HEARTBEAT and (ident is None or m.ident == ident)]
