"""The C client (libitt through the itt CLI) against a real broker and real
workers on loopback: greedy output through the cluster equals the in-process
engine (`itt generate --local`), concurrent clients get their own streams, a
worker killed mid-stream is invisible in the output, `itt stats` lists the
workers, broker errors become "itt generate: CODE: reason" with exit 1, and
`itt up` starts, serves, stops on SIGTERM and reports a killed child.

Needs ITT_MODEL_DIR (stories260K.gguf) and the built itt, itt-broker and
itt-worker in ITT_BIN_DIR; skips (77) without them.
"""
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import itt_test
from itt_test import Checks, SKIP, run, tool

MODEL = itt_test.require("stories260K.gguf", ("itt", "itt-broker", "itt-worker"))

from cluster import Cluster, free_port  # noqa: E402

ITT = tool("itt")
NAME = "stories260K"
PROMPTS = ["Once upon a time", "The cat", "Lily and Ben", "One day, a big dog",
           "Tom had a red ball", "The sun was", "A little bird", "Mom said"]
_local = {}


def local(prompt, n):
    """--local greedy reference, cached."""
    key = (prompt, n)
    if key not in _local:
        r = run([ITT, "generate", "--local", MODEL, "--temperature", "0", "-n", str(n),
                 "--prompt", prompt, "--json"], timeout=60)
        _local[key] = json.loads(r.stdout)
    return _local[key]


def broker_gen(front, prompt, n, *extra, timeout=60):
    return subprocess.run([ITT, "generate", "--broker", front, "--model", NAME,
                           "--temperature", "0", "-n", str(n), "--prompt", prompt, "--json",
                           *extra], capture_output=True, timeout=timeout)


def same_as_local(out, prompt, n):
    ref = local(prompt, n)
    got = json.loads(out)
    for key in ("prompt", "prompt_tokens", "tokens", "text", "stop_reason", "seed",
                "timings"):
        assert key in got, f"key {key} missing from {sorted(got)}"
    assert got["text"] == ref["text"], f"text differs:\n  {got['text']!r}\n  {ref['text']!r}"
    assert got["tokens"] == ref["tokens"], "tokens differ"
    assert got["prompt_tokens"] == ref["prompt_tokens"], "prompt tokens differ"
    assert got["stop_reason"] == ref["stop_reason"], (got["stop_reason"], ref["stop_reason"])
    return got


class Guarded(Checks):
    """Checks that count a timeout or a process failure as a failed check."""

    def check(self, name, fn):
        def guarded():
            try:
                return fn()
            except (subprocess.TimeoutExpired, RuntimeError, OSError, ValueError, KeyError) as e:
                raise AssertionError(f"{type(e).__name__}: {e}")
        super().check(name, guarded)


def main():
    checks = Guarded()
    # --slow-ms 2: the 8 concurrent streams of 64 tokens overlap for sure
    with Cluster(MODEL, workers=2, name=NAME, worker_args=["--slow-ms", "2"]) as c:

        def greedy_equal():
            r = broker_gen(c.front, "Once upon a time", 96)
            assert r.returncode == 0, r.stderr.decode(errors="replace")
            same_as_local(r.stdout, "Once upon a time", 96)
        checks.check("generate --broker greedy equals --local (96 tokens)", greedy_equal)

        def plain_stream():
            r = subprocess.run([ITT, "generate", "--broker", c.front, "--model", NAME,
                                "--temperature", "0", "-n", "40", "--prompt", "The cat"],
                               capture_output=True, timeout=60)
            assert r.returncode == 0, r.stderr.decode(errors="replace")
            ref = local("The cat", 40)
            assert r.stdout.decode() == "The cat" + ref["text"] + "\n", r.stdout
            assert b"stop: length" in r.stderr, r.stderr
        checks.check("generate --broker prints prompt + streamed text", plain_stream)

        def stop_string():
            ref = local("Once upon a time", 96)["text"]
            stop = "Lily"
            r = broker_gen(c.front, "Once upon a time", 96, "--stop", stop)
            assert r.returncode == 0, r.stderr
            got = json.loads(r.stdout)
            assert got["stop_reason"] == "stop", got["stop_reason"]
            assert got["text"] == ref[:ref.index(stop)], got["text"]
        checks.check("stop string cuts the text like --local", stop_string)

        def concurrent():
            t0 = time.monotonic()
            procs = [subprocess.Popen([ITT, "generate", "--broker", c.front, "--model", NAME,
                                       "--temperature", "0", "-n", "64", "--prompt", p,
                                       "--json"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE) for p in PROMPTS]
            outs = []
            try:
                for p in procs:
                    outs.append(p.communicate(timeout=60))
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            wall = time.monotonic() - t0
            for prompt, p, (out, err) in zip(PROMPTS, procs, outs):
                assert p.returncode == 0, f"{prompt!r}: {err.decode(errors='replace')}"
                same_as_local(out, prompt, 64)
            print(f"     8 clients x 64 tokens in {wall:.2f} s "
                  f"({8 * 64 / wall:.0f} tokens/s through the cluster)")
        checks.check("8 concurrent clients each get their own greedy stream", concurrent)

        def stats_json():
            r = run([ITT, "stats", "--broker", c.front, "--json"], timeout=30)
            st = json.loads(r.stdout)
            ids = sorted(w["id"] for w in st["workers"])
            assert ids == ["w0", "w1"], ids
            for w in st["workers"]:
                for key in ("id", "host", "model", "layer_first", "layer_last", "n_layers",
                            "state", "sessions", "max_sessions", "queue", "tokens_per_s",
                            "last_heartbeat_ms"):
                    assert key in w, f"worker field {key} missing"
                assert w["model"] == NAME and w["n_layers"] == 5, w
                assert w["state"] != "lost", w
            assert [m["name"] for m in st["models"]] == [NAME], st["models"]
            assert st["requests"] >= 11 and st["completed"] >= 11, st
            t = run([ITT, "stats", "--broker", c.front], timeout=30).stdout.decode()
            assert "w0" in t and "w1" in t and "MODEL" in t, t
        checks.check("itt stats --json lists both workers with their fields", stats_json)

        def errors():
            r = subprocess.run([ITT, "generate", "--broker", c.front, "--model", "no-such",
                                "-n", "4"], capture_output=True, timeout=30)
            assert r.returncode == 1, r.returncode
            assert b"itt generate: MODEL_NOT_FOUND: " in r.stderr, r.stderr
            r = subprocess.run([ITT, "generate", "--broker", c.front, "--model", NAME,
                                "--top-p", "2"], capture_output=True, timeout=30)
            assert r.returncode == 2, r.returncode
            assert b"itt generate: INVALID_ARGUMENT: " in r.stderr and b"top_p" in r.stderr
            r = subprocess.run([ITT, "stats", "--broker", f"tcp://127.0.0.1:{free_port()}",
                                "--timeout-ms", "300"], capture_output=True, timeout=30)
            assert r.returncode == 1 and b"itt stats: UNAVAILABLE" in r.stderr, r.stderr
        checks.check("errors: MODEL_NOT_FOUND exit 1, bad top_p exit 2, no broker", errors)

    checks.check("api keys: UNAUTHENTICATED without, served with", api_keys)
    checks.check("kill -9 of the serving worker: stream identical", kill_serving_worker)
    checks.check("broker restarted mid-stream: client re-sends, stream identical",
                 broker_restart_resubmit)
    checks.check("itt up: ready, serves, SIGTERM stops all", up_serves_and_stops)
    checks.check("itt up: a killed worker is reported, exit 1", up_reports_killed_child)
    checks.finish()


def api_keys():
    with Cluster(MODEL, workers=1, name=NAME, api_key="s3cret") as c:
        r = subprocess.run([ITT, "generate", "--broker", c.front, "--model", NAME, "-n", "4"],
                           capture_output=True, timeout=30, env={**os.environ, "ITT_API_KEY": ""})
        assert r.returncode == 1 and b"itt generate: UNAUTHENTICATED: " in r.stderr, r.stderr
        r = subprocess.run([ITT, "stats", "--broker", c.front, "--api-key", "wrong"],
                           capture_output=True, timeout=30)
        assert r.returncode == 1 and b"itt stats: UNAUTHENTICATED: " in r.stderr, r.stderr
        r = broker_gen(c.front, "The cat", 16, "--api-key", "s3cret")
        assert r.returncode == 0, r.stderr
        same_as_local(r.stdout, "The cat", 16)
        r = subprocess.run([ITT, "stats", "--broker", c.front, "--json"], capture_output=True,
                           timeout=30, env={**os.environ, "ITT_API_KEY": "s3cret"})
        assert r.returncode == 0 and json.loads(r.stdout)["workers"], r.stderr


def kill_serving_worker():
    n = 400
    ref = local("Once upon a time", n)
    with Cluster(MODEL, workers=2, name=NAME, worker_args=["--slow-ms", "8"]) as c:
        p = subprocess.Popen([ITT, "generate", "--broker", c.front, "--model", NAME,
                              "--temperature", "0", "-n", str(n), "--prompt",
                              "Once upon a time", "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            victim = None
            end = time.monotonic() + 20
            while victim is None and time.monotonic() < end and p.poll() is None:
                for w in c.stats().workers:
                    if w.sessions > 0 and w.steps >= 40:
                        victim = w.id
                time.sleep(0.05)
            assert victim is not None, "no worker was seen serving the stream"
            c.kill_worker(c.worker_index(victim), signal.SIGKILL)
            t_kill = time.monotonic()
            out, err = p.communicate(timeout=60)
            pause = time.monotonic() - t_kill
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, err.decode(errors="replace")
        got = same_as_local(out, "Once upon a time", n)
        assert got["tokens"] == ref["tokens"]
        assert got["replays"] >= 1, f"replays {got['replays']}"
        print(f"     killed {victim} mid-stream; stream finished {pause:.2f} s later, "
              f"replays {got['replays']}, 400 tokens identical")


def broker_restart_resubmit():
    """Kill -9 the broker mid-stream and start a new one on the same ports:
    after 5 s without a word from the broker the client re-sends its SUBMIT
    (same ids, same seed), the new broker generates the stream afresh, and
    the client drops the chunks it already has: the output is unchanged."""
    n = 300
    with Cluster(MODEL, workers=1, name=NAME, worker_args=["--slow-ms", "10"]) as c:
        p = subprocess.Popen([ITT, "generate", "--broker", c.front, "--model", NAME,
                              "--temperature", "0", "-n", str(n), "--prompt", "The sun was",
                              "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            end = time.monotonic() + 20
            seen = False
            while not seen and time.monotonic() < end and p.poll() is None:
                seen = any(w.sessions > 0 and w.steps >= 30 for w in c.stats().workers)
                time.sleep(0.05)
            assert seen, "the stream was not seen running"
            t0 = time.monotonic()
            c.restart_broker()
            t_up = time.monotonic() - t0
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, err.decode(errors="replace")
        same_as_local(out, "The sun was", n)
        print(f"     broker restarted (workers back in {t_up:.1f} s); "
              f"{n} tokens identical after the re-sent SUBMIT")


class Lines:
    """Reads a child's stdout lines in a thread, so waits can time out."""

    def __init__(self, stream):
        self.q = queue.Queue()
        self.all = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in iter(stream.readline, b""):
            self.q.put(line.decode(errors="replace"))
        self.q.put(None)

    def wait_for(self, text, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.all.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {timeout} s: {''.join(self.all)}")


def pids_of(lines):
    """broker and worker pids from itt up's start lines."""
    pids = {}
    for line in lines:
        words = line.split()
        if "pid" in words:
            k = words.index("pid")
            pids[" ".join(words[2:k])] = int(words[k + 1].rstrip(","))
    return pids


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def start_up(workers):
    fp, bp = free_port(), free_port()
    front = f"tcp://127.0.0.1:{fp}"
    p = subprocess.Popen([ITT, "up", "--workers", str(workers), "--model", MODEL, "--name",
                          NAME, "--front", front, "--back", f"tcp://127.0.0.1:{bp}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = Lines(p.stdout)
    return p, lines, front


def up_serves_and_stops():
    p, lines, front = start_up(2)
    try:
        lines.wait_for("ready", 30)
        pids = pids_of(lines.all)
        want = 4 if os.path.exists(itt_test.tool("itt-coordinator")) else 3
        assert len(pids) == want, pids  # broker, 2 workers (and the coordinator)
        r = broker_gen(front, "Lily and Ben", 32)
        assert r.returncode == 0, r.stderr
        same_as_local(r.stdout, "Lily and Ben", 32)
        p.send_signal(signal.SIGTERM)
        lines.wait_for("stopped", 15)
        rc = p.wait(timeout=15)
        assert rc == 0, f"itt up exited {rc}: {p.stderr.read().decode(errors='replace')}"
        left = [name for name, pid in pids.items() if not gone(pid)]
        assert not left, f"still running: {left}"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def up_reports_killed_child():
    p, lines, front = start_up(2)
    try:
        lines.wait_for("ready", 30)
        pids = pids_of(lines.all)
        os.kill(pids["worker 2"], signal.SIGKILL)
        rc = p.wait(timeout=20)
        err = p.stderr.read().decode(errors="replace")
        assert rc == 1, f"itt up exited {rc}"
        assert "itt-worker 2" in err and "killed by signal 9" in err, err
        left = [name for name, pid in pids.items() if not gone(pid)]
        assert not left, f"still running: {left}"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
