"""Pipeline stages and the coordinator, with the real processes.

Routes of 2 and 3 stages (workers started with --layers) give the same
greedy tokens as one whole worker (stories260K and a synthetic model, F32
and F16 activations).  With itt-coordinator: a worker that joins while
clients stream gets layers within seconds and no request fails; killing a
stage's worker mid-stream replays its sessions on a new route and they
complete identically; a worker slowed on purpose (slow_ms) loses layers and
the decision log says why; a coordinator restart interrupts nothing.

Every stream is compared token for token with the expected greedy output
(`itt generate --local --json`).  Times to rebalance are printed as facts,
not asserted.
"""
import json
import os
import threading
import time

import itt_test
from cluster import Cluster
from itt_test import Checks, SKIP, model, run, tool

PROMPTS = ["Once upon a time", "Lily and Ben", "The dog", "One day, a little"]
N_TOKENS = 48


def local_tokens(path, prompt, n):
    r = run([tool("itt"), "generate", "--local", path, "--prompt", prompt, "-n", str(n),
             "--temperature", "0", "--json"], timeout=120)
    return json.loads(r.stdout)["tokens"]


def expected(path, prompts=PROMPTS, n=N_TOKENS):
    return {p: local_tokens(path, p, n) for p in prompts}


def greedy(c, name, prompt, n=N_TOKENS, timeout=60):
    return c.client().generate_text(name, prompt, max_tokens=n, temperature=0.0,
                                    deadline_ms=int(timeout * 1000))


def routes_of(st):
    return [(r.source, list(r.worker_ids)) for r in st.routes]


def wait_for(fn, timeout, what):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        ok, last = fn()
        if ok:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout} s (last: {last})")


def staged_equal(path, ranges, want, broker_args=(), prompts=PROMPTS, n=N_TOKENS):
    """Workers holding `ranges` (and nothing else) serve every prompt with
    the expected tokens; returns the route the broker formed."""
    with Cluster(path, workers=0, broker_args=broker_args) as c:
        for a, b in ranges:
            c.add_worker(["--layers", f"{a}:{b}"], wait=False)
        c.wait_workers(len(ranges))
        st = c.stats()
        rs = routes_of(st)
        assert len(rs) == 1 and len(rs[0][1]) == len(ranges), f"routes {rs}"
        for p in prompts:
            r = greedy(c, c.name, p, n)
            assert r.tokens == want[p], (f"{p!r} through {ranges}: {r.tokens} != {want[p]}; "
                                         + c.log_tail("broker"))
        return rs[0]


class Streamer:
    """Clients that run greedy requests back to back and check each one."""

    def __init__(self, c, want, clients=3, n=N_TOKENS):
        self.c, self.want, self.n = c, want, n
        self.done = self.bad = 0
        self.errors = []
        self.replays = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(clients)]

    def _run(self, i):
        import itt_client
        cl = itt_client.Client(self.c.front, client_id=f"streamer-{i}-{os.getpid()}")
        k = i
        try:
            while not self.stop.is_set():
                p = PROMPTS[k % len(PROMPTS)]
                k += 1
                try:
                    r = cl.generate_text(self.c.name, p, max_tokens=self.n, temperature=0.0,
                                         deadline_ms=60000)
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    self.errors.append(f"{p!r}: {e}")
                    continue
                self.replays += r.replays
                if r.tokens == self.want[p]:
                    self.done += 1
                else:
                    self.bad += 1
                    self.errors.append(f"{p!r}: tokens differ: {r.tokens} != {self.want[p]}")
        finally:
            cl.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)

    def check(self, least=1):
        assert not self.errors, f"{len(self.errors)} failed: {self.errors[:3]}"
        assert self.done >= least, f"only {self.done} requests completed"


def decisions(c, knob=None):
    st = c.stats()
    return [d for d in st.decisions if knob is None or d.knob == knob]


def layer_counts(st):
    return {w.id: w.layer_last - w.layer_first for w in st.workers if w.state != "lost"}


def coordinator_routes(c, stages):
    """Waits until the broker's routes are the coordinator's, with `stages`
    stages, every worker ready; returns the stats."""
    def ok():
        st = c.stats()
        rs = routes_of(st)
        good = (rs and all(src == "coordinator" and len(ids) == stages for src, ids in rs)
                and all(w.state != "loading" for w in st.workers))
        return good, rs
    wait_for(ok, 20, f"coordinator routes of {stages} stages")
    return c.stats()


def main():
    m = model("stories260K.gguf")
    if not m:
        return SKIP
    ck = Checks()
    want = expected(m)

    ck.check("2-stage route [0,2)+[2,5) of stories260K equals one worker",
             lambda: staged_equal(m, [(0, 2), (2, 5)], want))
    ck.check("3-stage route [0,1)+[1,3)+[3,5) equals one worker",
             lambda: staged_equal(m, [(0, 1), (1, 3), (3, 5)], want))
    ck.check("2 stages passing F16 activations (--act-f16 1) equal one worker",
             lambda: staged_equal(m, [(0, 3), (3, 5)], want, broker_args=["--act-f16", "1"]))

    synth = os.path.join(itt_test.TMP, f"pipeline-synth-{os.getpid()}.gguf")
    run([tool("itt-synth"), synth, "--dim", "128", "--layers", "6", "--heads", "4",
         "--kv-heads", "2", "--ffn", "256", "--vocab", "512", "--seed", "11"], timeout=120)
    try:
        swant = expected(synth, PROMPTS[:2], 32)
        ck.check("synthetic 6-layer model: 2 and 3 stages equal one worker", lambda: (
            staged_equal(synth, [(0, 4), (4, 6)], swant, prompts=PROMPTS[:2], n=32),
            staged_equal(synth, [(0, 1), (1, 2), (2, 6)], swant, prompts=PROMPTS[:2], n=32)))
    finally:
        os.unlink(synth)

    def bad_ranges():
        # a route with a gap is never formed: the request waits, then its deadline
        with Cluster(m, workers=0) as c:
            c.add_worker(["--layers", "0:2"], wait=False)
            c.add_worker(["--layers", "3:5"], wait=False)
            c.wait_workers(2)
            assert routes_of(c.stats()) == [], routes_of(c.stats())
            import itt_client
            try:
                c.client().generate_text(c.name, "Hi", max_tokens=4, temperature=0.0,
                                         deadline_ms=500)
            except itt_client.IttError as e:
                assert "DEADLINE" in str(e) or e.code == 4, e
            else:
                raise AssertionError("a request without a route completed")
    ck.check("ranges with a gap form no route; the request meets its deadline", bad_ranges)

    if not os.path.exists(tool("itt-coordinator")):
        print("SKIP: itt-coordinator is not built; coordinator checks skipped")
        ck.finish()

    # One cluster for the coordinator's checks, in order: 2 workers as a
    # 2-stage route, a third joins, one is killed, one is slowed, the
    # coordinator restarts.
    c = Cluster(m, workers=2)
    try:
        c.start_coordinator(["--stages", "2", "--hold-s", "2", "--cooldown-s", "2"])
        st = coordinator_routes(c, 2)

        def join():
            with Streamer(c, want) as s:
                time.sleep(1.0)
                t0 = time.monotonic()
                c.add_worker(wait=False)
                st = coordinator_routes(c, 3)
                took = time.monotonic() - t0
                counts = layer_counts(st)
                assert len(counts) == 3 and all(v >= 1 for v in counts.values()), counts
                time.sleep(1.0)
            s.check()
            print(f"  join: routes of 3 stages {took:.2f} s after the worker started; "
                  f"{s.done} requests identical, {s.replays} replays; layers {counts}")
        ck.check("a worker joins while clients stream: it gets layers, no request fails",
                 join)

        def kill_stage():
            with Streamer(c, want) as s:
                time.sleep(1.0)
                st = c.stats()
                victim = max(layer_counts(st).items(), key=lambda kv: (kv[1], kv[0]))[0]
                t0 = time.monotonic()
                c.kill_worker(c.worker_index(victim))
                st = coordinator_routes(c, 2)
                took = time.monotonic() - t0
                time.sleep(1.0)
            s.check()
            assert s.replays >= 1, "no session was replayed"
            print(f"  leave: {victim} killed; routes of 2 stages again after {took:.2f} s; "
                  f"{s.done} requests identical, {s.replays} replays")
        ck.check("killing a stage's worker mid-stream: replayed on a new route, identical",
                 kill_stage)

        def slowed():
            with Streamer(c, want, clients=4) as s:
                time.sleep(2.5)  # every stage measured
                st = c.stats()
                before = layer_counts(st)
                slow = max(before.items(), key=lambda kv: (kv[1], kv[0]))[0]
                c.client().settings(slow, slow_ms=25)

                def moved():
                    ds = [d for d in decisions(c, "layers") if d.target == slow
                          and "slow" in d.reason]
                    return bool(ds), ds
                ds = wait_for(moved, 30, f"a layers decision moving {slow} for its slowness")
                st = coordinator_routes(c, 2)
                after = layer_counts(st)
                c.client().settings(slow, slow_ms=0)
            s.check()
            assert after[slow] < before[slow], (before, after)
            print(f"  slowed {slow}: layers {before} -> {after}; decision: "
                  f"{ds[-1].old_value} -> {ds[-1].new_value}: {ds[-1].reason}")
        ck.check("a worker slowed on purpose loses layers; the decision log says why", slowed)

        def restart():
            with Streamer(c, want) as s:
                time.sleep(0.5)
                n_before = len(decisions(c, "layers"))
                c.kill_coordinator()
                time.sleep(2.0)
                assert not c.stats().coordinator, "the broker still lists the coordinator"
                c.start_coordinator(["--stages", "2", "--hold-s", "2", "--cooldown-s", "2"])
                wait_for(lambda: (c.stats().coordinator, None), 10, "the coordinator back")
                time.sleep(2.0)
                n_after = len(decisions(c, "layers"))
            s.check()
            assert n_after == n_before, f"{n_after - n_before} layer moves after the restart"
            print(f"  coordinator restart: {s.done} requests identical, {s.replays} replays")
        ck.check("a coordinator restart does not interrupt streams or move layers", restart)
    finally:
        c.stop()
    ck.finish()


if __name__ == "__main__":
    main()
