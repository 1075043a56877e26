#!/usr/bin/env python3
"""bench-broker: what itt-broker costs, measured with trivial C peers
(itt-bench-peer, built from tests/bench/bench-peer.c) on 127.0.0.1.

1. Added latency of the broker hop, p50/p99 over --n round trips:
   direct      client -> trivial worker (STEP -> RESULT), no broker;
   relay       the same through a zero-logic ZeroMQ relay (the floor: one
               extra hop with no work in it);
   broker      SUBMIT max_tokens 1 -> first CHUNK through itt-broker
               (SUBMIT, OPEN, RESULT, CHUNK: two extra hops and the broker's
               admission, session and stream work);
   stream gap  the time between chunks of one long stream (one step routed:
               RESULT in, CHUNK and STEP out, worker round trip).
   The paths take turns round by round; "added per request" is the p50 of
   the per-round difference broker - direct, "added per step" is
   stream gap p50 - direct p50.
2. Steps routed per second by the broker with trivial workers: C load
   clients keep --clients x --streams streams open over --workers worker
   sockets; chunks per second over --seconds, and the broker's own CPU time
   per step (from /proc), i.e. the rate one broker core sustains.
3. Time from a worker's death (kill -9, and SIGSTOP: hung but connected) to
   its stream resuming on another worker, with the default heartbeat (500 ms
   x 3); the resumed stream is checked: no chunk lost or repeated, tokens
   equal to the deterministic sequence.

Prints a table and one JSON line.  Usage:
  tests/bench/bench-broker.py [--bin-dir BUILD/bin] [--n 3000] [--seconds 5]
Environment: ITT_BIN_DIR (default build/bin), ITT_PY_DIR (default
BIN/../python, for itt_pb2).  Targets: < 100 us added per hop at p50,
>= 20,000 steps/s, resume < 3 s.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE, "tests", "integration"))
PROCS = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def ep(port):
    return f"tcp://127.0.0.1:{port}"


def spawn(args, **kw):
    p = subprocess.Popen(args, **kw)
    PROCS.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Broker:
    def __init__(self, bindir, *flags):
        self.front, self.back = ep(free_port()), ep(free_port())
        self.p = spawn([os.path.join(bindir, "itt-broker"), "--front", self.front,
                        "--back", self.back, "--log-level", "error", *flags])


def peer(bindir, *args, **kw):
    return spawn([os.path.join(bindir, "itt-bench-peer"), *map(str, args)], **kw)


def run_json(bindir, *args, timeout=300):
    r = subprocess.run([os.path.join(bindir, "itt-bench-peer"), *map(str, args)],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"itt-bench-peer {args[0]} failed: {r.stderr[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def wait_stats(F, P, zmq, front, pred, timeout=10.0):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(front)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            s.send_multipart([F.SIG, bytes([F.STATS]), b""])
            if s.poll(1000):
                fr = s.recv_multipart()
                if fr[1][0] == F.STATS_REPLY:
                    st = P.ClusterStats.FromString(fr[2])
                    if pred(st):
                        return st
            time.sleep(0.05)
    finally:
        s.close(0)
    raise RuntimeError("the broker did not reach the expected state")


def bench_latency(a):
    B = Broker(a.bin_dir)
    direct, relay = free_port(), free_port()
    w = peer(a.bin_dir, "worker", "--connect", B.back)
    d = peer(a.bin_dir, "worker", "--bind", ep(direct))
    r = peer(a.bin_dir, "relay", "--bind", ep(relay), "--direct", ep(direct))
    time.sleep(0.5)
    c0 = cpu_s(B.p.pid)
    res = run_json(a.bin_dir, "latency", "--broker", B.front, "--direct", ep(direct),
                   "--relay", ep(relay), "--n", a.n)
    res["broker_cpu_us_per_request"] = (cpu_s(B.p.pid) - c0) * 1e6 / (2 * a.n + 200)
    for p in (r, d, w, B.p):
        stop(p)
    return res


def bench_rate(a):
    B = Broker(a.bin_dir)
    w = peer(a.bin_dir, "worker", "--connect", B.back, "--count", a.workers)
    time.sleep(0.5)
    c0, t0 = cpu_s(B.p.pid), time.monotonic()
    res = run_json(a.bin_dir, "load", "--broker", B.front, "--clients", a.clients,
                   "--streams", a.streams, "--tokens", 1000, "--seconds", a.seconds)
    cpu = cpu_s(B.p.pid) - c0
    wall = time.monotonic() - t0
    res["broker_cpu_s"] = cpu
    res["broker_cpu_share"] = cpu / wall
    # chunks counted in a window of `seconds`; the CPU covers the warm-up too
    res["broker_steps_per_cpu_s"] = res["chunks"] / (cpu * res["seconds"] / wall) if cpu else 0
    stop(w)
    stop(B.p)
    return res


def bench_resume(a, F, P, zmq):
    B = Broker(a.bin_dir)
    workers = [peer(a.bin_dir, "worker", "--connect", B.back, "--delay-us", 5000)
               for _ in range(2)]
    wait_stats(F, P, zmq, B.front, lambda s: len(s.workers) == 2)
    c = zmq.Context.instance().socket(zmq.DEALER)
    c.setsockopt(zmq.LINGER, 0)
    c.connect(B.front)
    runs = []
    for i in range(a.resume_runs * 2):
        how = "kill -9" if i % 2 == 0 else "SIGSTOP"
        rid = f"resume-{os.getpid()}-{i}"
        prompt = [1, 2, 3 + i]
        c.send_multipart([F.SIG, bytes([F.SUBMIT]), P.GenerateRequest(
            request_id=rid, client_id="bench", model="bench", prompt_tokens=prompt,
            max_tokens=65536).SerializeToString()])
        chunks, killed, t_kill, t_resume, last_hb = [], None, 0.0, 0.0, 0.0
        while True:
            now = time.monotonic()
            if now - last_hb > 0.5:
                c.send_multipart([F.SIG, bytes([F.HEARTBEAT]), b""])
                last_hb = now
            if not c.poll(5000):
                raise RuntimeError(f"{how}: stream stalled for 5 s ({len(chunks)} chunks)")
            fr = c.recv_multipart()
            if fr[1][0] == F.ERROR:
                e = P.Error.FromString(fr[2])
                if e.request_id != rid:  # the previous run's CANCEL
                    continue
                raise RuntimeError(f"{how}: ERROR {e.code}: {e.reason}")
            if fr[1][0] != F.CHUNK:
                continue
            m = P.StreamChunk.FromString(fr[2])
            if m.request_id != rid:
                continue
            chunks.append(m)
            if len(chunks) == 100 and killed is None:
                st = wait_stats(F, P, zmq, B.front, lambda s: True)
                owner = next(w for w in st.workers if w.sessions)
                pid = int(owner.id.split(":")[1])
                killed = next(p for p in workers if p.pid == pid)
                t_kill = time.monotonic()
                os.kill(pid, signal.SIGKILL if how == "kill -9" else signal.SIGSTOP)
            elif killed is not None and not t_resume:
                if time.monotonic() - t_kill > 0.003:  # not one already on its way
                    t_resume = time.monotonic()
            if t_resume and len(chunks) >= 300:
                break
        c.send_multipart([F.SIG, bytes([F.CANCEL]), P.Cancel(
            request_id=rid, client_id="bench").SerializeToString()])
        seqs = [x.seq for x in chunks]
        toks = [t for x in chunks for t in x.tokens]
        want = F.expected_tokens(prompt, len(toks), 512)[0]
        ok = seqs == list(range(len(seqs))) and toks == want
        runs.append({"how": how, "resume_ms": (t_resume - t_kill) * 1e3, "intact": ok})
        if how == "SIGSTOP":
            os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        workers.remove(killed)
        workers.append(peer(a.bin_dir, "worker", "--connect", B.back, "--delay-us", 5000))
        wait_stats(F, P, zmq, B.front, lambda s: len(s.workers) == 2 and
                   not any(w.sessions for w in s.workers))
    c.close(0)
    for p in workers:
        stop(p)
    stop(B.p)
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", default=os.environ.get("ITT_BIN_DIR",
                                                        os.path.join(SOURCE, "build", "bin")))
    ap.add_argument("--n", type=int, default=3000, help="round trips per latency path")
    ap.add_argument("--seconds", type=float, default=5, help="length of the rate run")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--streams", type=int, default=16, help="streams per client")
    ap.add_argument("--workers", type=int, default=4, help="trivial worker sockets")
    ap.add_argument("--resume-runs", type=int, default=2, help="runs per kind of death")
    a = ap.parse_args()
    os.environ.setdefault("ITT_PY_DIR", os.path.join(a.bin_dir, "..", "python"))
    import fakeworker as F
    import zmq
    P = F.pb()
    for b in ("itt-broker", "itt-bench-peer"):
        if not os.path.exists(os.path.join(a.bin_dir, b)):
            sys.exit(f"bench-broker: {b} not found in {a.bin_dir} (build it, or --bin-dir)")
    try:
        lat = bench_latency(a)
        rate = bench_rate(a)
        resume = bench_resume(a, F, P, zmq)
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
            p.wait()
    added = lat["added_paired_p50_us"]
    added_step = lat["stream_gap_p50_us"] - lat["direct_p50_us"]
    kills = [r["resume_ms"] for r in resume if r["how"] == "kill -9"]
    stops = [r["resume_ms"] for r in resume if r["how"] == "SIGSTOP"]
    def us(k):
        return f"{lat[k]:.0f} us"

    rows = [
        ("direct step round trip (no broker)", us("direct_p50_us"), us("direct_p99_us")),
        ("through a zero-logic relay", us("relay_p50_us"), us("relay_p99_us")),
        ("through itt-broker: SUBMIT -> first CHUNK", us("broker_p50_us"), us("broker_p99_us")),
        ("through itt-broker: step in a stream", us("stream_gap_p50_us"),
         us("stream_gap_p99_us")),
        ("added by the broker per request (p50)", f"{added:.0f} us", "target < 100 us"),
        ("  same, p99 (paired, round by round)", f"{lat['added_paired_p99_us']:.0f} us", ""),
        ("added by the broker per step (p50)", f"{added_step:.0f} us", ""),
        ("broker CPU per round trip, low load", f"{lat['broker_cpu_us_per_request']:.1f} us",
         ""),
        ("steps routed per second", f"{rate['chunks_per_s']:.0f}", "target >= 20,000"),
        ("broker CPU share during the rate run", f"{rate['broker_cpu_share'] * 100:.0f} %", ""),
        ("steps per broker CPU-second (one core)", f"{rate['broker_steps_per_cpu_s']:.0f}", ""),
        ("resume after kill -9 (each run)", " ".join(f"{x:.0f}" for x in kills) + " ms",
         "target < 3 s"),
        ("resume after SIGSTOP (hung worker)", " ".join(f"{x:.0f}" for x in stops) + " ms",
         "target < 3 s"),
        ("resumed streams intact", str(all(r["intact"] for r in resume)), ""),
    ]
    print(f"itt-broker benchmark ({os.cpu_count()} cores, loopback)")
    print(f"{'measure':<44} {'p50 / value':>16} {'p99 / note':>18}")
    for name, v, n in rows:
        print(f"{name:<44} {v:>16} {n:>18}")
    print(json.dumps({"bench": "broker", "latency": lat, "added_p50_us": added,
                      "added_step_p50_us": added_step, "rate": rate, "resume": resume}))
    return 0 if all(r["intact"] for r in resume) else 1


if __name__ == "__main__":
    sys.exit(main())
