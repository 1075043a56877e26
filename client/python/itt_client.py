"""itt_client: a Python client of an itt cluster (proto/PROTOCOL.md, "Client session").

    from itt_client import Client
    with Client("tcp://127.0.0.1:5555") as c:
        for item in c.generate("stories260K", "Once upon a time", max_tokens=64,
                               temperature=0):
            if item.final:
                print("\\n", item.stop_reason, item.timings)
            else:
                print(item.text, end="", flush=True)

Contract:
- One DEALER socket per Client; several generations may be open at once and
  are demultiplexed by request_id.  Each stream yields its chunks in seq
  order, each exactly once, then one final Result; an ERROR from the cluster
  raises IttError (code, name, reason) instead.
- While streams are open the client sends HEARTBEAT every heartbeat_s; when
  the broker has been silent for resubmit_s it re-sends the open SUBMITs with
  the same ids (the broker then re-sends the stream, and repeated chunks are
  dropped here); after timeout_s of silence a stream raises IttError
  UNAVAILABLE.  A request without a seed gets a random one here, so a
  re-sent SUBMIT reproduces the same stream.
- stats() returns the broker's ClusterStats; settings() changes, pins or
  unpins a worker's knobs (threads, batch_tokens, slow_ms) with SET and
  returns the SettingsReply.  Both raise IttError for the broker's ERROR.
- I/O happens only while the caller iterates or calls stats() or
  settings(); a Client is for one thread at a time.
- Nothing the broker sends can raise anything but IttError: malformed
  messages are dropped.

The message classes (itt_pb2) come from $ITT_PY_DIR when it holds them (the
build generates them), else from a cache folder where they are generated on
first import by running `protoc --python_out` on proto/itt.proto, found
relative to this file.
"""
import collections
import hashlib
import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import time

import zmq

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_pb2():
    d = os.environ.get("ITT_PY_DIR")
    if d and os.path.exists(os.path.join(d, "itt_pb2.py")):
        return _import_file(os.path.join(d, "itt_pb2.py"))
    proto = os.path.normpath(os.path.join(HERE, "..", "..", "proto", "itt.proto"))
    if not os.path.exists(proto):
        try:
            import itt_pb2  # installed beside this module
            return itt_pb2
        except ImportError:
            raise ImportError("itt_pb2 not found: set ITT_PY_DIR to the build's python folder")
    with open(proto, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    roots = []
    if os.environ.get("XDG_CACHE_HOME"):
        roots.append(os.environ["XDG_CACHE_HOME"])
    roots.append(os.path.join(os.path.expanduser("~"), ".cache"))
    roots.append(os.path.join(tempfile.gettempdir(), "itt-cache-%d" % os.getuid()))
    last = None
    for root in roots:
        cache = os.path.join(root, "itt", "python-" + digest)
        target = os.path.join(cache, "itt_pb2.py")
        if os.path.exists(target):
            return _import_file(target)
        try:
            os.makedirs(cache, exist_ok=True)
            tmp = tempfile.mkdtemp(dir=cache)
            subprocess.run(["protoc", "--python_out=" + tmp, "-I", os.path.dirname(proto),
                            proto], check=True, capture_output=True, timeout=60)
            os.replace(os.path.join(tmp, "itt_pb2.py"), target)  # atomic for racing importers
            os.rmdir(tmp)
            return _import_file(target)
        except (OSError, subprocess.SubprocessError) as e:
            last = e
    raise ImportError(f"cannot generate itt_pb2 from {proto} with protoc: {last}")


def _import_file(path):
    spec = importlib.util.spec_from_file_location("itt_pb2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules.setdefault("itt_pb2", mod)
    return mod


pb = _load_pb2()

SIGNATURE = b"ITT\x01"
SUBMIT, CHUNK, DONE, ERROR, CANCEL, HEARTBEAT, STATS, STATS_REPLY = range(1, 9)
SET, SET_REPLY = 0x25, 0x26
_BODIES = {CHUNK: "StreamChunk", DONE: "StreamDone", ERROR: "Error", HEARTBEAT: "Heartbeat",
           STATS_REPLY: "ClusterStats", SET_REPLY: "SettingsReply"}
# Live-adjustable worker knobs and their ranges (PROTOCOL.md, "Telemetry,
# settings, placement"); batch_tokens' upper bound is the worker's own.
KNOBS = {"threads": (1, 64), "batch_tokens": (1, 2**32 - 1), "slow_ms": (0, 10000)}
_SAMPLING = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty",
             "repeat_last_n", "presence_penalty", "frequency_penalty", "seed")
MAX_MESSAGE = 1 << 20  # the front end's limit (PROTOCOL.md, "Limits")


def _fill_message(msg, name, fields):
    """Sets a technique message's fields from a dict (None: absent)."""
    if fields is None:
        return
    if not isinstance(fields, dict):
        raise TypeError(f"{name} must be a dict of its fields")
    msg.SetInParent()
    for k, v in fields.items():
        if v is None:
            continue
        if k not in msg.DESCRIPTOR.fields_by_name:
            raise TypeError(f"unknown {name} field {k!r}")
        f = msg.DESCRIPTOR.fields_by_name[k]
        if f.label == f.LABEL_REPEATED:
            if isinstance(v, str):
                v = [x for x in v.split(",") if x]
            getattr(msg, k).extend(int(x) if f.type == f.TYPE_UINT32 else x for x in v)
        else:
            setattr(msg, k, v)


def code_name(code):
    try:
        return pb.Code.Name(code)
    except ValueError:
        return "UNKNOWN_CODE"


class IttError(Exception):
    """An ERROR from the cluster, or a local one (UNAVAILABLE, INTERNAL)."""

    def __init__(self, code, reason, request_id=""):
        self.code = int(code)
        self.name = code_name(self.code)
        self.reason = reason
        self.request_id = request_id
        super().__init__(f"{self.name}: {reason}")


class Chunk:
    """The next piece of a stream: seq, token ids, and their text."""
    final = False

    def __init__(self, m):
        self.seq = m.seq
        self.tokens = list(m.tokens)
        self.data = bytes(m.text)  # UTF-8 may split across chunks
        self.text = self.data.decode("utf-8", errors="replace")

    def __repr__(self):
        return f"Chunk(seq={self.seq}, tokens={self.tokens}, text={self.text!r})"


class Result:
    """The end of a stream (DONE), with everything the stream carried."""
    final = True

    def __init__(self, request_id, chunks, m):
        self.request_id = request_id
        self.tokens = [t for c in chunks for t in c.tokens]
        self.data = b"".join(c.data for c in chunks)
        self.text = self.data.decode("utf-8", errors="replace")
        self.stop_reason = m.stop_reason
        self.prompt_tokens = list(m.prompt_tokens)
        self.n_tokens = m.n_tokens
        self.n_chunks = m.n_chunks
        self.seed = m.seed
        self.replays = m.replays
        self.timings = {"queue_ms": m.timings.queue_ms,
                        "first_token_ms": m.timings.first_token_ms,
                        "total_ms": m.timings.total_ms}

    def __repr__(self):
        return (f"Result(stop_reason={self.stop_reason!r}, tokens={len(self.tokens)}, "
                f"seed={self.seed}, replays={self.replays})")


class Stream:
    """One generation: iterate for Chunk objects and then the final Result."""

    def __init__(self, client, request_id, submit):
        self.client = client
        self.request_id = request_id
        self._submit = submit
        self._queue = collections.deque()  # ("chunk", Chunk) / ("done", msg) / ("error", exc)
        self._pending = {}  # early chunks by seq
        self._next_seq = 0
        self._final = False  # final item queued
        self._ended = False  # final item handed out
        self._gap_resent = False
        self._chunks = []
        self.result = None
        now = time.monotonic()
        self._heard = self._quiet_since = now

    def __iter__(self):
        return self

    def __next__(self):
        if self._ended:
            raise StopIteration
        while not self._queue:
            self.client._pump(self, None)
        kind, item = self._queue.popleft()
        if kind == "chunk":
            self._chunks.append(item)
            return item
        self._ended = True
        self.client._forget(self)
        if kind == "error":
            raise item
        self.result = Result(self.request_id, self._chunks, item)
        return self.result

    def cancel(self):
        """Sends CANCEL; iteration then ends with IttError CANCELLED (or DONE)."""
        if not self._final:
            self.client._send(CANCEL, pb.Cancel(request_id=self.request_id,
                                                client_id=self.client.client_id))

    # -- called by the client --
    def _on_chunk(self, m):
        if self._final or m.seq < self._next_seq:
            return
        if m.seq > self._next_seq:
            if len(self._pending) < 4096:
                self._pending.setdefault(m.seq, m)
            return
        self._queue.append(("chunk", Chunk(m)))
        self._next_seq += 1
        while self._next_seq in self._pending:
            self._queue.append(("chunk", Chunk(self._pending.pop(self._next_seq))))
            self._next_seq += 1

    def _on_done(self, m):
        if self._final:
            return
        if m.n_chunks > self._next_seq:
            if not self._gap_resent:  # the broker re-sends the whole stream
                self._gap_resent = True
                self.client._resend(self)
            else:
                self._end("error", IttError(pb.INTERNAL, f"stream ended after {m.n_chunks} "
                                            f"chunks but only {self._next_seq} arrived",
                                            self.request_id))
            return
        self._end("done", m)

    def _end(self, kind, item):
        if not self._final:
            self._queue.append((kind, item))
            self._final = True
            self._pending.clear()


class Client:
    def __init__(self, endpoint, client_id=None, api_key=None, heartbeat_s=1.0,
                 resubmit_s=5.0, timeout_s=30.0):
        if client_id is not None and not 1 <= len(client_id.encode()) <= 64:
            raise ValueError("client_id must have 1..64 bytes")
        self.endpoint = endpoint
        self.client_id = client_id or "py-%016x" % random.getrandbits(64)
        self.api_key = api_key
        self.heartbeat_s = heartbeat_s
        self.resubmit_s = resubmit_s
        self.timeout_s = timeout_s
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        for opt, v in ((zmq.LINGER, 1000), (zmq.HANDSHAKE_IVL, 2000),
                       (zmq.RECONNECT_IVL, 100), (zmq.RECONNECT_IVL_MAX, 4000),
                       (zmq.HEARTBEAT_IVL, 1000), (zmq.HEARTBEAT_TIMEOUT, 3000)):
            self._sock.setsockopt(opt, v)
        self._sock.connect(endpoint)
        self._streams = {}
        self._n = 0
        self._last_send = 0.0
        self._stats = None
        self._stats_waiting = False
        self._set_reply = None
        self._set_id = None
        self._n_sets = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Cancels the streams that have not ended and closes the socket."""
        if self._sock is None:
            return
        for s in list(self._streams.values()):
            if not s._final:
                s.cancel()
        self._streams.clear()
        self._sock.close()
        self._ctx.term()
        self._sock = None

    def generate(self, model, prompt="", *, prompt_tokens=None, max_tokens=None, stop=(),
                 deadline_ms=None, priority=None, tenant=None, request_id=None,
                 logit_bias=None, guidance=None, speculative=None, early_exit=None,
                 messages=None, chat_template=None, **sampling):
        """Submits a generation; returns a Stream to iterate.  Sampling keywords:
        temperature, top_k, top_p, min_p, typical_p, repeat_penalty,
        repeat_last_n, presence_penalty, frequency_penalty, seed; logit_bias is
        a {token: bias} dict.  Absent fields take the broker's defaults.

        Techniques (PROTOCOL.md, "Techniques"), dicts of the message's fields:
          guidance={"heads": ["2:3", ...] | "head_set": NAME | "negative_prompt":
                    TEXT, "scale": S, "blend": U}  ("heads" may be "2:3,4:0")
          speculative={"draft": "ngram" | "exit", "max_draft": N,
                       "exit_layers": K, "ngram_min": A, "ngram_max": B}
          early_exit={"threshold": T, "layers": [1, 2]}
        The broker validates them (IttError INVALID_ARGUMENT naming the field).

        Chat (PROTOCOL.md, "Chat"): messages=[{"role": "system" | "user" |
        "assistant", "content": TEXT}, ...] instead of a prompt; the worker
        renders them with the model's chat template, or chat_template (a name
        such as "chatml" or "llama3"), and generation ends at the end of the
        assistant's turn."""
        unknown = set(sampling) - set(_SAMPLING)
        if unknown:
            raise TypeError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
        if request_id is None:
            self._n += 1
            request_id = f"r{self._n}"
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already open on this client")
        req = pb.GenerateRequest(request_id=request_id, client_id=self.client_id, model=model)
        if prompt:
            req.prompt = prompt
        if prompt_tokens:
            req.prompt_tokens.extend(prompt_tokens)
        for m in messages or ():
            req.messages.add(role=m["role"], content=m.get("content", ""))
        if chat_template:
            req.chat_template = chat_template
        if max_tokens is not None:
            req.max_tokens = max_tokens
        req.stop.extend(stop or ())
        if deadline_ms:
            req.deadline_ms = deadline_ms
        if priority:
            req.priority = priority
        if tenant:
            req.tenant = tenant
        if self.api_key:
            req.api_key = self.api_key
        sp = req.sampling
        for k, v in sampling.items():
            if v is not None:
                setattr(sp, k, v)
        if sampling.get("seed") is None:
            sp.seed = random.getrandbits(63)  # fixed here, so that re-sends reproduce
        for tok, bias in (logit_bias or {}).items():
            sp.logit_bias.add(token=tok, bias=bias)
        _fill_message(req.guidance, "guidance", guidance)
        _fill_message(req.speculative, "speculative", speculative)
        _fill_message(req.early_exit, "early_exit", early_exit)
        body = req.SerializeToString()
        if len(body) + 5 > MAX_MESSAGE:
            raise IttError(pb.INVALID_ARGUMENT, f"request of {len(body)} bytes exceeds the "
                           f"broker's message limit of {MAX_MESSAGE} bytes", request_id)
        s = Stream(self, request_id, body)
        self._streams[request_id] = s
        self._send_raw(SUBMIT, body)
        return s

    def generate_text(self, model, prompt="", **kw):
        """Runs a generation to its end; returns the Result (raises IttError)."""
        result = None
        for item in self.generate(model, prompt, **kw):
            result = item
        return result

    def stats(self, timeout_s=5.0):
        """The broker's ClusterStats (an itt_pb2 message); raises IttError."""
        req = pb.StatsRequest()
        if self.api_key:
            req.api_key = self.api_key
        self._stats = None
        self._stats_waiting = True
        try:
            self._send(STATS, req)
            end = time.monotonic() + timeout_s
            while self._stats is None:
                left = end - time.monotonic()
                if left <= 0:
                    raise IttError(pb.UNAVAILABLE, f"no STATS_REPLY within {timeout_s} s")
                self._pump(None, left)
        finally:
            self._stats_waiting = False
        got, self._stats = self._stats, None
        if isinstance(got, IttError):
            raise got
        return got

    def settings(self, worker_id, *, pin=False, pin_knobs=(), unpin_knobs=(), reason=None,
                 timeout_s=5.0, **knobs):
        """Changes one worker's knobs: settings("w1", threads=2, pin=True) sets
        and pins threads; pin_knobs / unpin_knobs pin knobs at their current
        values or release them.  Knobs: threads (1..64), batch_tokens (>= 1,
        at most the worker's max), slow_ms (0..10000).  Returns the broker's
        SettingsReply (itt_pb2: worker_id, settings requested, pinned).
        Raises TypeError for an unknown knob keyword, ValueError for a value
        or knob name refused here (nothing is sent), IttError for the
        broker's ERROR (NOT_FOUND: unknown worker; INVALID_ARGUMENT: bad
        value or a pinned knob) or UNAVAILABLE when no reply came."""
        unknown = set(knobs) - set(KNOBS)
        if unknown:
            raise TypeError(f"unknown knob(s): {', '.join(sorted(unknown))} "
                            f"(knobs: {', '.join(KNOBS)})")
        if not worker_id or len(worker_id.encode()) > 128:
            raise ValueError("worker_id must have 1..128 bytes")
        st = pb.Settings()
        for k, v in knobs.items():
            lo, hi = KNOBS[k]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{k} must be an integer in {lo}..{hi}, got {v!r}")
            setattr(st, k, v)
        pin_knobs, unpin_knobs = list(pin_knobs), list(unpin_knobs)
        for k in pin_knobs + unpin_knobs:
            if k not in KNOBS:
                raise ValueError(f"unknown knob {k!r} (knobs: {', '.join(KNOBS)})")
        if not knobs and not pin_knobs and not unpin_knobs:
            raise ValueError("nothing to change: no knob to set, pin or unpin")
        if pin and not knobs:
            raise ValueError("pin applies to the knobs set, and none is")
        if set(unpin_knobs) & (set(pin_knobs) | (set(knobs) if pin else set())):
            raise ValueError("a knob cannot be pinned and unpinned at once")
        self._n_sets += 1
        self._set_id = f"set-{self._n_sets}"
        ch = pb.SettingsChange(worker_id=worker_id, request_id=self._set_id,
                               pin_knobs=pin_knobs, unpin_knobs=unpin_knobs)
        if knobs:
            ch.settings.CopyFrom(st)
        if pin:
            ch.pin = True
        if reason:
            ch.reason = reason
        if self.api_key:
            ch.api_key = self.api_key
        self._set_reply = None
        try:
            self._send(SET, ch)
            end = time.monotonic() + timeout_s
            while self._set_reply is None:
                left = end - time.monotonic()
                if left <= 0:
                    raise IttError(pb.UNAVAILABLE, f"no SET_REPLY within {timeout_s} s")
                self._pump(None, left)
        finally:
            self._set_id = None
        got, self._set_reply = self._set_reply, None
        if isinstance(got, IttError):
            raise got
        return got

    # -- internals --
    def _send_raw(self, cmd, body):
        try:
            self._sock.send_multipart([SIGNATURE, bytes([cmd]), body], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # the queue is full: the silence timer re-sends SUBMITs
        self._last_send = time.monotonic()

    def _send(self, cmd, msg):
        self._send_raw(cmd, msg.SerializeToString())

    def _resend(self, s):
        self._send_raw(SUBMIT, s._submit)
        s._quiet_since = time.monotonic()

    def _forget(self, s):
        self._streams.pop(s.request_id, None)

    def _duties(self):
        now = time.monotonic()
        wait = self.heartbeat_s
        open_ = [s for s in self._streams.values() if not s._final]
        for s in open_:
            if self.timeout_s and now - s._heard >= self.timeout_s:
                s.cancel()
                s._end("error", IttError(pb.UNAVAILABLE, f"no answer from the broker for "
                                         f"{self.timeout_s} s", s.request_id))
                continue
            if now - s._quiet_since >= self.resubmit_s:
                self._resend(s)
            wait = min(wait, s._quiet_since + self.resubmit_s - now)
            if self.timeout_s:
                wait = min(wait, s._heard + self.timeout_s - now)
        if open_:
            if now - self._last_send >= self.heartbeat_s:
                self._send(HEARTBEAT, pb.Heartbeat(time_ms=int(time.time() * 1000)))
            wait = min(wait, self._last_send + self.heartbeat_s - now)
        return max(wait, 0.001)

    def _pump(self, want, timeout_s):
        """Receives and dispatches until `want` has a queued item, a STATS
        answer is in, or timeout_s passes (None: no limit)."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            while True:
                try:
                    frames = self._sock.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.monotonic()
                for s in self._streams.values():
                    s._heard = s._quiet_since = now
                self._dispatch(frames)
            wait = self._duties()
            if (want is not None and want._queue) or (want is None and (
                    self._stats is not None or self._set_reply is not None)):
                return
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return
                wait = min(wait, left)
            self._sock.poll(int(wait * 1000) + 1, zmq.POLLIN)

    def _dispatch(self, frames):
        if len(frames) not in (3, 4) or frames[0] != SIGNATURE or len(frames[1]) != 1:
            return
        cmd = frames[1][0]
        if cmd not in _BODIES:
            return
        m = getattr(pb, _BODIES[cmd])()
        try:
            m.ParseFromString(frames[2])
        except Exception:  # DecodeError and friends: a malformed body is dropped
            return
        if cmd == HEARTBEAT:
            return
        if cmd == SET_REPLY or (cmd == ERROR and self._set_id is not None
                                and m.request_id in ("", self._set_id)):
            if self._set_id is not None and self._set_reply is None and (
                    cmd == ERROR or m.request_id in ("", self._set_id)):
                self._set_reply = m if cmd == SET_REPLY else IttError(m.code or pb.INTERNAL,
                                                                      m.reason)
            return
        if cmd == STATS_REPLY or (cmd == ERROR and not m.request_id):
            # an ERROR about no request answers STATS (e.g. UNAUTHENTICATED)
            if self._stats_waiting and self._stats is None:
                self._stats = m if cmd == STATS_REPLY else IttError(m.code or pb.INTERNAL,
                                                                     m.reason)
            return
        s = self._streams.get(m.request_id)
        if s is None:
            return
        if cmd == CHUNK:
            s._on_chunk(m)
        elif cmd == DONE:
            s._on_done(m)
        else:
            s._end("error", IttError(m.code or pb.INTERNAL, m.reason, m.request_id))
