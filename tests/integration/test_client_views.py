"""The client's views of a cluster against a fake broker, and the delay proxy.

A FrontBroker (a ZeroMQ ROUTER in a thread, below) answers STATS with a
ClusterStats the test fills (workers with telemetry and pins, routes,
decisions, coordinator, replays) and SET with SET_REPLY or ERROR as the test
says, keeping every SettingsChange it got.  Checked:
- `itt stats` shows the new fields in the table, and `--json` carries them;
- the table fits 80 columns with --width 80 and long ids are cut;
- `itt stats --watch --count 2` (stdout not a TTY) prints 2 frames, and
  SIGTERM ends a watch with exit 0; on a TTY (a pty) it draws on the
  alternate screen within the terminal's width and restores it on Ctrl-C;
- `itt settings set w1 threads=2 --pin` sends the right SettingsChange and
  prints the reply; pin / unpin send pin_knobs / unpin_knobs; an ERROR reply
  exits 1 with its code and reason; bad knobs and values are refused before
  anything is sent (exit 2); `itt settings get` prints settings and pins;
- the Python client's settings() does the same;
- `itt up` starts a (fake) itt-coordinator with --broker BACK --stages N
  --log-level L and stops it; --no-coordinator starts none (needs
  stories260K.gguf and the broker and worker; that check skips without);
- tests/tools/delayproxy.py: a round trip through it takes at least twice
  the one-way delay, and cut() breaks the connection.

Needs the built `itt` (skips, 77, without it) and pyzmq + protobuf.
"""
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import itt_test
from itt_test import Checks, SKIP, tool

sys.path.insert(0, os.path.join(itt_test.SOURCE, "client", "python"))
sys.path.insert(0, os.path.join(itt_test.SOURCE, "tests", "tools"))
import zmq  # noqa: E402

import itt_client  # noqa: E402  (loads itt_pb2 from ITT_PY_DIR)
from itt_client import Client, IttError  # noqa: E402
import delayproxy  # noqa: E402

pb = itt_client.pb
SIG = b"ITT\x01"
ERROR, STATS, STATS_REPLY, SET, SET_REPLY = 0x04, 0x07, 0x08, 0x25, 0x26
ITT = tool("itt")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class FrontBroker:
    """A broker front end that answers STATS and SET only.

    stats: the ClusterStats to answer with.  on_set(change) returns a
    SettingsReply, or (code, reason) for an ERROR.  sets: every
    SettingsChange received, in order."""

    def __init__(self, stats, on_set=None):
        self.stats = stats
        self.on_set = on_set or (lambda ch: pb.SettingsReply(
            request_id=ch.request_id, worker_id=ch.worker_id, settings=ch.settings))
        self.sets = []
        self.n_stats = 0
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_ev.is_set():
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart()
            ident, rest = frames[0], frames[1:]
            if len(rest) != 3 or rest[0] != SIG or len(rest[1]) != 1:
                continue
            cmd, body = rest[1][0], rest[2]
            if cmd == STATS:
                self.n_stats += 1
                out = [SIG, bytes([STATS_REPLY]), self.stats.SerializeToString()]
            elif cmd == SET:
                ch = pb.SettingsChange()
                ch.ParseFromString(body)
                self.sets.append(ch)
                r = self.on_set(ch)
                if isinstance(r, tuple):
                    err = pb.Error(request_id=ch.request_id, code=r[0], reason=r[1])
                    out = [SIG, bytes([ERROR]), err.SerializeToString()]
                else:
                    out = [SIG, bytes([SET_REPLY]), r.SerializeToString()]
            else:
                continue
            self.sock.send_multipart([ident] + out)

    def close(self):
        self.stop_ev.set()
        self.thread.join(2)
        self.sock.close()


LONG_ID = "very-long-worker-host-name.example.org:123456:deadbeefcafe"


def cluster_stats():
    st = pb.ClusterStats(uptime_ms=3723_000, requests=120, completed=110, failed=2,
                         coordinator=True, replays=3)
    layers = [(0, 2), (2, 4), (4, 5)]
    for i, (a, b) in enumerate(layers):
        wid = f"w{i + 1}"
        w = st.workers.add(id=wid, host=f"host-{i + 1}", model="stories260K", layer_first=a,
                           layer_last=b, n_layers=5, state="ready", sessions=2 + i,
                           max_sessions=64, queue=i, tokens_per_s=12.5 * (i + 1),
                           last_heartbeat_ms=120, threads=2, steps=1000)
        t = w.telemetry
        t.worker_id, t.time_ms, t.layer_first, t.layer_last = wid, 1732780800000, a, b
        t.steps, t.rows, t.step_ms, t.rows_per_step = 1000, 4000, 7.25 + i, 4.0
        t.tokens_per_s, t.busy, t.sessions, t.waiting = 510.0, 0.75, 2 + i, 0
        t.kv_used, t.kv_blocks, t.cpu, t.rss_bytes = 17 + i, 4096, 1.85, 300 * 1024 * 1024
        t.cores, t.ms_per_row_layer, t.state = 8, 0.9, "ready"
        t.settings.threads = 4 if i == 0 else 2
        t.settings.batch_tokens = 64
        t.settings.slow_ms = 0
        if i == 0:
            w.pinned.append("threads")
            t.pinned.append("threads")
    st.workers[2].telemetry.cpu = float("nan")  # JSON null, "-" in the table
    st.workers.add(id=LONG_ID, host="h", model="stories260K", layer_first=0, layer_last=5,
                   n_layers=5, state="ready", sessions=0, max_sessions=64,
                   tokens_per_s=float("inf"))  # and no telemetry
    st.models.add(name="stories260K", queued=1, queue_limit=64, running=9, workers=4)
    st.routes.add(model="stories260K", worker_ids=["w1", "w2", "w3"], source="coordinator",
                  sessions=9)
    st.routes.add(model="stories260K", worker_ids=[LONG_ID], source="auto", sessions=0)
    st.decisions.add(time_ms=1732780000000, target="w2", knob="threads", old_value="4",
                     new_value="2", reason="too busy: cpu 1.9 of 2 cores", source="coordinator")
    st.decisions.add(time_ms=1732780060000, target="stories260K", knob="routes",
                     old_value="auto", new_value="w1 -> w2 -> w3",
                     reason="3 stages balance the layers", source="coordinator")
    return st


def itt(*args, timeout=30, **kw):
    return subprocess.run([ITT, *args], capture_output=True, timeout=timeout, **kw)


def main():
    if not os.access(ITT, os.X_OK):
        print(f"SKIP: {ITT} is not built")
        sys.exit(SKIP)
    checks = Checks()
    fb = FrontBroker(cluster_stats())
    ep = fb.endpoint
    env = {**os.environ, "ITT_BROKER": "", "ITT_API_KEY": ""}

    def stats_table():
        r = itt("stats", "--broker", ep, "--width", "120", env=env)
        assert r.returncode == 0, r.stderr
        t = r.stdout.decode()
        for want in ("coordinator yes", "up 1h02m03s", "requests 120", "completed 110",
                     "failed 2", "replays 3", "[0,2)", "[2,4)", "[4,5)", "4*", "KV", "17/4096",
                     "7.2", "1.85", "300", "BUDGET", "64", "w1 -> w2 -> w3", "coordinator, 9",
                     "threads", "4 -> 2", "too busy", "TOTAL", "75.0 tok/s", "4 workers",
                     "9 sessions", "pinned", "MODEL", "stories260K"):
            assert want in t, f"{want!r} missing from:\n{t}"
        # newest decision first
        assert t.index("w1 -> w2 -> w3  (coordinator)") < t.index("4 -> 2"), t
        long_lines = [line for line in t.splitlines() if len(line) > 120]
        assert not long_lines, long_lines
        assert LONG_ID not in t and "~" in t, "the long id was not cut"
    checks.check("itt stats: telemetry, pins, routes, decisions, coordinator, replays",
                 stats_table)

    def stats_narrow():
        r = itt("stats", "--broker", ep, "--width", "80", env=env)
        assert r.returncode == 0, r.stderr
        t = r.stdout.decode()
        long_lines = [line for line in t.splitlines() if len(line) > 80]
        assert not long_lines, "\n".join(long_lines)
        assert "w1" in t and "[2,4)" in t and "4*" in t and "not shown (too narrow)" in t, t
    checks.check("itt stats --width 80: every line fits, columns left out are named",
                 stats_narrow)

    def stats_json():
        r = itt("stats", "--broker", ep, "--json", env=env)
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["coordinator"] is True and st["replays"] == 3, st
        w1 = st["workers"][0]
        assert w1["id"] == "w1" and w1["pinned"] == ["threads"], w1
        t = w1["telemetry"]
        assert t["settings"] == {"threads": 4, "batch_tokens": 64, "slow_ms": 0}, t
        assert t["kv_used"] == 17 and t["kv_blocks"] == 4096 and t["cpu"] == 1.85, t
        assert t["rss_bytes"] == 300 * 1024 * 1024 and t["state"] == "ready", t
        assert abs(t["ms_per_row_layer"] - 0.9) < 1e-9, t
        assert st["workers"][3]["telemetry"] is None, st["workers"][3]
        assert st["workers"][3]["tokens_per_s"] is None, st["workers"][3]
        assert st["workers"][2]["telemetry"]["cpu"] is None, st["workers"][2]
        assert st["routes"][0] == {"model": "stories260K", "worker_ids": ["w1", "w2", "w3"],
                                   "source": "coordinator", "sessions": 9}, st["routes"]
        d = st["decisions"][0]
        assert d["target"] == "w2" and d["knob"] == "threads" and d["old_value"] == "4", d
        assert d["new_value"] == "2" and d["source"] == "coordinator", d
        for key in ("id", "host", "model", "layer_first", "layer_last", "n_layers", "state",
                    "sessions", "max_sessions", "queue", "tokens_per_s", "last_heartbeat_ms"):
            assert key in w1, key
    checks.check("itt stats --json carries telemetry, pinned, routes, decisions", stats_json)

    def watch_count():
        n0 = fb.n_stats
        t0 = time.monotonic()
        r = itt("stats", "--broker", ep, "--watch", "--count", "2", "--interval-ms", "300",
                env=env)
        wall = time.monotonic() - t0
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        assert "\x1b" not in out, "escape codes written to a pipe"
        frames = out.split("\n\nbroker ")
        assert len(frames) == 2, f"{len(frames)} frames:\n{out}"
        assert out.count("requests 120") == 2 and out.count("\nROUTES\n") == 2, out
        assert fb.n_stats - n0 == 2, fb.n_stats - n0
        assert wall >= 0.3, wall
        r = itt("stats", "--broker", ep, "--watch", "--count", "2", "--interval-ms", "100",
                "--json", env=env)
        lines = r.stdout.decode().splitlines()
        assert r.returncode == 0 and len(lines) == 2, r.stdout
        assert all(json.loads(line)["replays"] == 3 for line in lines)
    checks.check("itt stats --watch --count 2 (not a TTY) prints 2 frames", watch_count)

    def watch_sigterm():
        p = subprocess.Popen([ITT, "stats", "--broker", ep, "--watch", "--interval-ms", "200"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        time.sleep(0.8)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
        assert p.returncode == 0, (p.returncode, err)
        assert out.count(b"ROUTES") >= 2, out
    checks.check("itt stats --watch: SIGTERM ends it with exit 0", watch_sigterm)

    def watch_tty():
        import pty
        master, slave = pty.openpty()
        import fcntl
        import termios
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
        p = subprocess.Popen([ITT, "stats", "--broker", ep, "--watch", "--interval-ms", "200"],
                             stdout=slave, stderr=subprocess.PIPE, env=env)
        os.close(slave)
        out = b""
        end = time.monotonic() + 10
        while out.count(b"ROUTES") < 2 and time.monotonic() < end:
            out += os.read(master, 65536)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=10)
        try:
            while True:
                d = os.read(master, 65536)
                if not d:
                    break
                out += d
        except OSError:
            pass
        os.close(master)
        assert p.returncode == 0, (p.returncode, p.stderr.read())
        assert out.startswith(b"\x1b[?1049h"), out[:40]
        assert out.rstrip().endswith(b"\x1b[?25h\x1b[?1049l"), out[-40:]
        assert out.count(b"\x1b[H") >= 2, "not redrawn"
        text = out.replace(b"\x1b[K", b"").replace(b"\r", b"").decode(errors="replace")
        for line in text.split("\n"):
            line = line.split("\x1b[H")[-1]
            assert len(line) <= 90 or "\x1b[" in line, line
    checks.check("itt stats --watch on a TTY: full screen, fits 90 columns, restored on "
                 "Ctrl-C", watch_tty)

    def watch_no_broker():
        dead = f"tcp://127.0.0.1:{free_port()}"
        r = itt("stats", "--broker", dead, "--watch", "--count", "2", "--interval-ms", "200",
                env=env)
        assert r.returncode == 1, r.returncode
        assert r.stdout.decode().count("no answer: UNAVAILABLE") == 2, r.stdout
    checks.check("itt stats --watch: frames without an answer say so, exit 1", watch_no_broker)

    def settings_set_pin():
        fb.sets.clear()
        r = itt("settings", "set", "w1", "threads=2", "--pin", "--broker", ep,
                "--reason", "test", env=env)
        fb.on_set = None
        assert r.returncode == 0, r.stderr
        assert len(fb.sets) == 1, fb.sets
        ch = fb.sets[0]
        assert ch.worker_id == "w1" and ch.HasField("settings"), ch
        assert ch.settings.HasField("threads") and ch.settings.threads == 2, ch
        assert not ch.settings.HasField("batch_tokens"), ch
        assert not ch.settings.HasField("slow_ms"), ch
        assert ch.HasField("pin") and ch.pin, ch
        assert list(ch.pin_knobs) == [] and list(ch.unpin_knobs) == [], ch
        assert ch.reason == "test" and ch.request_id, ch
        out = r.stdout.decode()
        assert out.startswith("w1: threads=2; pinned: threads"), out
    fb.on_set = lambda ch: pb.SettingsReply(request_id=ch.request_id, worker_id=ch.worker_id,
                                            settings=ch.settings, pinned=["threads"])
    checks.check("itt settings set w1 threads=2 --pin: SettingsChange and reply",
                 settings_set_pin)

    def settings_pin_unpin():
        fb.sets.clear()
        fb.on_set = lambda ch: pb.SettingsReply(request_id=ch.request_id,
                                                worker_id=ch.worker_id,
                                                pinned=list(ch.pin_knobs))
        r = itt("settings", "pin", "w2", "batch_tokens", "slow_ms", "--broker", ep,
                "--json", env=env)
        assert r.returncode == 0, r.stderr
        ch = fb.sets[-1]
        assert ch.worker_id == "w2" and list(ch.pin_knobs) == ["batch_tokens", "slow_ms"], ch
        assert not ch.HasField("settings") and not ch.pin, ch
        rep = json.loads(r.stdout)
        assert rep == {"worker_id": "w2", "settings": None,
                       "pinned": ["batch_tokens", "slow_ms"]}, rep
        r = itt("settings", "unpin", "w2", "threads", "--broker", ep, env=env)
        assert r.returncode == 0, r.stderr
        ch = fb.sets[-1]
        assert list(ch.unpin_knobs) == ["threads"] and not list(ch.pin_knobs), ch
        assert b"pinned: none" in r.stdout, r.stdout
        r = itt("settings", "set", "w3", "batch_tokens=16", "slow_ms=5", "--broker", ep,
                env=env)
        ch = fb.sets[-1]
        assert r.returncode == 0 and ch.settings.batch_tokens == 16, (r.stderr, ch)
        assert ch.settings.slow_ms == 5 and not ch.settings.HasField("threads"), ch
        assert not ch.HasField("pin") or not ch.pin, ch
    checks.check("itt settings pin / unpin / set of two knobs send the right fields",
                 settings_pin_unpin)

    def settings_error():
        fb.on_set = lambda ch: (pb.NOT_FOUND, f"unknown worker {ch.worker_id}")
        r = itt("settings", "set", "w9", "threads=2", "--broker", ep, env=env)
        assert r.returncode == 1, r.returncode
        assert b"itt settings set: NOT_FOUND: unknown worker w9" in r.stderr, r.stderr
        fb.on_set = lambda ch: (pb.INVALID_ARGUMENT, "knob threads of worker w1 is pinned")
        r = itt("settings", "unpin", "w1", "slow_ms", "--broker", ep, env=env)
        assert r.returncode == 1 and b"INVALID_ARGUMENT: knob threads" in r.stderr, r.stderr
    checks.check("itt settings: an ERROR reply exits 1 with code and reason", settings_error)

    def settings_refused_locally():
        fb.sets.clear()
        cases = [
            (["set", "w1", "thread=2"], b"unknown knob \"thread\""),
            (["set", "w1", "threads=0"], b"threads must be in 1..64"),
            (["set", "w1", "threads=65"], b"threads must be in 1..64"),
            (["set", "w1", "threads=x"], b"not a whole number"),
            (["set", "w1", "slow_ms=10001"], b"slow_ms must be in 0..10000"),
            (["set", "w1", "batch_tokens=0"], b"batch_tokens must be >= 1"),
            (["set", "w1", "threads"], b"expected KNOB=VALUE"),
            (["set", "w1", "threads=2", "threads=3"], b"given twice"),
            (["set", "w1"], b"no knob given"),
            (["set"], b"WORKER is required"),
            (["set", "threads=2", "--pin"], b"WORKER comes first"),
            (["pin", "w1", "budget"], b"unknown knob \"budget\""),
            (["pin", "w1", "threads=2"], b"--pin"),
            (["unpin", "w1", "--pin", "threads"], b"unknown option --pin"),
            (["frob", "w1"], b"unknown subcommand"),
        ]
        for args, msg in cases:
            r = itt("settings", *args, "--broker", ep, env=env)
            assert r.returncode == 2, (args, r.returncode, r.stderr)
            assert msg in r.stderr, (args, r.stderr)
        assert fb.sets == [], fb.sets
    checks.check("itt settings: bad knobs and values are refused before sending (exit 2)",
                 settings_refused_locally)

    def settings_get():
        r = itt("settings", "get", "--broker", ep, env=env)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.decode().splitlines()
        w1 = [line for line in lines if line.startswith("w1 ")]
        assert w1 and w1[0].split()[1:5] == ["4*", "64", "0", "threads"], lines
        r = itt("settings", "get", "w2", "--broker", ep, "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == [{"id": "w2", "settings": {"threads": 2,
                                                                  "batch_tokens": 64,
                                                                  "slow_ms": 0},
                                         "pinned": []}], r.stdout
        r = itt("settings", "get", "w9", "--broker", ep, env=env)
        assert r.returncode == 1 and b"NOT_FOUND" in r.stderr, r.stderr
    checks.check("itt settings get: settings in force and pins, per worker", settings_get)

    def help_texts():
        for args in (["stats", "--help"], ["settings", "--help"], ["up", "--help"]):
            r = itt(*args)
            assert r.returncode == 0 and b"usage: itt " + args[0].encode() in r.stdout, args
        t = itt("stats", "--help").stdout
        for opt in (b"--watch", b"--interval-ms", b"--count", b"--width", b"--json"):
            assert opt in t, opt
        t = itt("up", "--help").stdout
        assert b"--no-coordinator" in t and b"--stages" in t, t
        r = itt("stats", "--count", "2", "--broker", ep)
        assert r.returncode == 2 and b"need --watch" in r.stderr, r.stderr
    checks.check("--help of stats, settings and up is complete", help_texts)

    def python_settings():
        fb.sets.clear()
        fb.on_set = lambda ch: pb.SettingsReply(request_id=ch.request_id,
                                                worker_id=ch.worker_id, settings=ch.settings,
                                                pinned=list(ch.pin_knobs))
        with Client(ep) as c:
            rep = c.settings("w1", threads=3, batch_tokens=32, pin_knobs=["slow_ms"],
                             reason="py")
            ch = fb.sets[-1]
            assert ch.settings.threads == 3 and ch.settings.batch_tokens == 32, ch
            assert list(ch.pin_knobs) == ["slow_ms"] and ch.reason == "py", ch
            assert rep.worker_id == "w1" and rep.settings.threads == 3, rep
            assert list(rep.pinned) == ["slow_ms"], rep
            n = len(fb.sets)
            for bad in ({"threads": 0}, {"nonsense": 1}, {"unpin_knobs": ["x"]}, {}):
                try:
                    c.settings("w1", **bad)
                except (ValueError, TypeError):
                    pass
                else:
                    raise AssertionError(f"{bad} was not refused")
            assert len(fb.sets) == n, "a refused change was sent"
            fb.on_set = lambda ch: (pb.NOT_FOUND, "unknown worker w9")
            try:
                c.settings("w9", threads=2)
            except IttError as e:
                assert e.name == "NOT_FOUND" and "w9" in e.reason, e
            else:
                raise AssertionError("no IttError")
            st = c.stats()
            assert st.coordinator and st.routes[0].worker_ids == ["w1", "w2", "w3"], st
    checks.check("python Client.settings(): SET, reply, local refusals, ERROR",
                 python_settings)
    fb.close()
    checks.check("itt up starts itt-coordinator with --broker, --stages, --log-level; "
                 "--no-coordinator starts none", up_coordinator)

    def proxy_delay():
        echo = EchoServer()
        delay_ms = 60
        with delayproxy.DelayProxy(("127.0.0.1", echo.port), delay_ms=delay_ms) as px:
            s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
            rtts = []
            for i in range(5):
                t0 = time.monotonic()
                s.sendall(b"ping %d\n" % i)
                got = b""
                while not got.endswith(b"\n"):
                    got += s.recv(100)
                rtts.append((time.monotonic() - t0) * 1e3)
                assert got == b"ping %d\n" % i, got
            # order kept over a burst of chunks
            burst = b"".join(b"%05d," % k for k in range(2000))
            for k in range(0, len(burst), 1000):
                s.sendall(burst[k:k + 1000])
            got = b""
            while len(got) < len(burst):
                got += s.recv(65536)
            assert got == burst, "bytes reordered or lost"
            s.close()
        echo.close()
        assert min(rtts) >= 2 * delay_ms, rtts
        assert max(rtts) < 2 * delay_ms + 500, rtts
        print(f"     round trips through a {delay_ms} ms proxy: "
              f"{', '.join('%.0f' % r for r in rtts)} ms")
    checks.check("delayproxy: a round trip takes >= 2x the one-way delay", proxy_delay)

    def proxy_cut():
        echo = EchoServer()
        with delayproxy.DelayProxy(("127.0.0.1", echo.port), delay_ms=5) as px:
            s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
            s.sendall(b"a\n")
            assert s.recv(10) == b"a\n"
            assert px.connections() == 1, px.connections()
            px.cut()
            s.settimeout(3)
            broken = False
            try:
                data = s.recv(10)
                broken = data == b""
                if not broken:
                    s.sendall(b"b\n")
                    broken = s.recv(10) == b""
            except (ConnectionError, socket.timeout, OSError):
                broken = True
            assert broken, "the connection survived cut()"
            s.close()
            assert px.connections() == 0, px.connections()
            # the proxy still accepts new connections after a cut
            s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
            s.sendall(b"c\n")
            assert s.recv(10) == b"c\n"
            s.close()
        echo.close()
    checks.check("delayproxy: cut() breaks open connections", proxy_cut)

    def proxy_script():
        echo = EchoServer()
        port = free_port()
        script = os.path.join(itt_test.SOURCE, "tests", "tools", "delayproxy.py")
        p = subprocess.Popen([sys.executable, script, "--listen", f"127.0.0.1:{port}",
                              "--target", f"127.0.0.1:{echo.port}", "--delay-ms", "30"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            line = p.stdout.readline().decode()
            assert "listening" in line, line
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            t0 = time.monotonic()
            s.sendall(b"x\n")
            assert s.recv(10) == b"x\n"
            rtt = (time.monotonic() - t0) * 1e3
            assert rtt >= 60, rtt
            p.send_signal(signal.SIGUSR1)  # cut
            s.settimeout(3)
            try:
                data = s.recv(10)
            except OSError:
                data = b""
            assert data == b"", data
            s.close()
        finally:
            p.terminate()
            p.wait(timeout=10)
            echo.close()
        assert p.returncode == 0, p.returncode
    checks.check("delayproxy as a script: delay, SIGUSR1 cuts, SIGTERM exits 0",
                 proxy_script)
    checks.finish()


FAKE_COORDINATOR = """#!/bin/sh
echo "$*" > "$(dirname "$0")/coordinator-args"
trap 'echo stopped >> "$(dirname "$0")/coordinator-args"; exit 0' TERM
while :; do sleep 0.1; done
"""


def up_coordinator():
    """itt up in a folder of its own beside a fake itt-coordinator (a shell
    script that writes its arguments down and waits for SIGTERM)."""
    model = itt_test.model("stories260K.gguf")
    if model is None or not all(os.access(tool(b), os.X_OK) for b in ("itt-broker",
                                                                       "itt-worker")):
        return SKIP
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="up-coord-", dir=itt_test.TMP)
    for b in ("itt", "itt-broker", "itt-worker"):
        shutil.copy2(tool(b), d)
    with open(os.path.join(d, "itt-coordinator"), "w") as f:
        f.write(FAKE_COORDINATOR)
    os.chmod(os.path.join(d, "itt-coordinator"), 0o755)
    args_file = os.path.join(d, "coordinator-args")

    def up(*extra):
        fp, bp = free_port(), free_port()
        p = subprocess.Popen([os.path.join(d, "itt"), "up", "--model", model, "--front",
                              f"tcp://127.0.0.1:{fp}", "--back", f"tcp://127.0.0.1:{bp}",
                              *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines = []
        try:
            end = time.monotonic() + 40
            while time.monotonic() < end:
                line = p.stdout.readline().decode()
                if not line:
                    break
                lines.append(line)
                if "ready" in line:
                    break
            p.send_signal(signal.SIGTERM)
            out, err = p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        lines += out.decode().splitlines(keepends=True)
        assert p.returncode == 0, (p.returncode, err.decode(errors="replace"))
        return "".join(lines), bp

    text, bp = up("--stages", "1", "--log-level", "warn")
    assert "itt up: coordinator pid" in text and "ready: 1 worker registered; coordinator" \
        in text, text
    with open(args_file) as f:
        got = f.read().split("\n")
    assert got[0] == f"--broker tcp://127.0.0.1:{bp} --stages 1 --log-level warn", got
    assert got[1] == "stopped", got
    os.unlink(args_file)
    text, _ = up("--no-coordinator")
    assert "coordinator" not in text, text
    assert not os.path.exists(args_file), "a coordinator was started"
    r = itt("up", "--model", model, "--no-coordinator", "--stages", "2")
    assert r.returncode == 2 and b"need the coordinator" in r.stderr, r.stderr
    shutil.rmtree(d, ignore_errors=True)


class EchoServer:
    """A TCP echo server on a free loopback port (one thread per connection)."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.conns = queue.Queue()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.conns.put(c)
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.lsock.close()


if __name__ == "__main__":
    main()
