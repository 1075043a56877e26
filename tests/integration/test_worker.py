"""itt-worker against a fake broker (fakebroker.py), model stories260K.gguf.

Checks: registration (HELLO fields, heartbeats, BYE and exit 0 on SIGTERM);
greedy generation through OPEN/STEP equals `itt generate --local
--temperature 0 --json`; 4 interleaved sessions give the tokens each gives
alone; replay (OPEN with prompt + first k generated tokens continues
identically, greedy and seeded temperature 0.8); CLOSE frees the session
(a later STEP gets NOT_FOUND); invalid OPENs get INVALID_ARGUMENT with the
session id and the worker keeps serving; OVERLOADED when sessions or KV
memory run out; garbage frames are dropped; heartbeats keep their interval
during a long chunked prefill, which does not stall a short session; the
broker going away and coming back on the same port gets a new HELLO within
5 s (both through ERROR NOT_FOUND and through the liveness timeout); the KV
flags (--kv-type f16 gives the CLI's greedy tokens; bad values exit 2).
Many sessions at once, waiting, preemption and prefix sharing: test_batching.py.
"""
import json
import os
import signal
import socket
import subprocess
import time

from itt_test import Checks, SKIP, TMP, model, run, tool
import fakebroker as fbm
from fakebroker import FakeBroker, pb
from workerproc import Workers

MODEL = None
EOS = 2
N_GEN = 40
PROMPTS = ["Once upon a time", "Lily went to the park", "The cat sat", ""]
WORKERS = Workers("test_worker")


def start_worker(fb, *extra, name="worker"):
    return WORKERS.start(MODEL, fb.endpoint, name, *extra)[0]


stop = WORKERS.stop
check_exits = WORKERS.check_exits


def registered(fb, timeout=10):
    m = fb.wait_hello(timeout)
    assert m is not None, f"no HELLO within {timeout} s"
    return m


def reference(prompt, n=N_GEN, temperature=0.0, seed=None):
    args = [tool("itt"), "generate", "--local", MODEL, "--prompt", prompt, "-n", str(n),
            "--temperature", str(temperature), "--json"]
    if seed is not None:
        args += ["--seed", str(seed)]
    d = json.loads(run(args).stdout)
    return d["prompt_tokens"], d["tokens"]


def run_sessions(fb, specs, n=N_GEN, timeout=30):
    """Opens every session of specs {sid: open kwargs}, steps each with its
    last token until n tokens or EOS; returns {sid: tokens}, {sid: step-0 RESULT}."""
    out = {sid: [] for sid in specs}
    first = {}
    for sid, kw in specs.items():
        fb.open(sid, **kw)
    active = set(specs)
    end = time.monotonic() + timeout
    while active:
        m = fb.recv({fbm.RESULT, fbm.ERROR}, timeout=max(0.1, end - time.monotonic()))
        assert m is not None, f"timed out with sessions {sorted(active)} running"
        if m.cmd == fbm.ERROR:
            raise AssertionError(f"unexpected ERROR {m.body}")
        r = m.body
        sid = r.session_id
        assert sid in active, f"RESULT for session {sid}, which is not running"
        assert r.step == len(out[sid]), f"session {sid}: step {r.step}, want {len(out[sid])}"
        if r.step == 0:
            first[sid] = r
        out[sid].append(r.token)
        if r.token == EOS or len(out[sid]) >= n:
            active.discard(sid)
            fb.close_session(sid)
        else:
            fb.step(sid, r.step + 1, [r.token])
    return out, first


def expect_error(fb, code, sid, what, timeout=10):
    m = fb.recv({fbm.ERROR, fbm.RESULT}, timeout)
    assert m is not None, f"{what}: no answer"
    assert m.cmd == fbm.ERROR, f"{what}: got {m}, want ERROR {code}"
    assert m.body.code == code, f"{what}: code {m.body.code}, want {code}: {m.body.reason}"
    assert m.body.session_id == sid, f"{what}: session_id {m.body.session_id}, want {sid}"
    assert m.body.reason, f"{what}: empty reason"
    return m.body


# ---- checks -------------------------------------------------------------------


def check_registration():
    fb = FakeBroker(heartbeat_ms=200)
    p = start_worker(fb, "--id", "test-worker-1", "--max-sessions", "7", "--threads", "1",
                     name="registration")
    try:
        h = registered(fb).body
        want = dict(worker_id="test-worker-1", host=socket.gethostname(), pid=p.pid,
                    model="stories260K", layer_first=0, layer_last=5, n_layers=5, vocab=512,
                    ctx_len=2048, dim=64, eos_token=2, max_sessions=7, threads=1)
        for k, v in want.items():
            assert getattr(h, k) == v, f"HELLO {k} = {getattr(h, k)!r}, want {v!r}"
        assert h.cores >= 1 and h.mem_bytes > (1 << 20), f"cores {h.cores} mem {h.mem_bytes}"
        time.sleep(1.2)
        hb = fb.heartbeat_times()
        assert len(hb) >= 4, f"{len(hb)} heartbeats in 1.2 s at 200 ms"
        p.send_signal(signal.SIGTERM)
        m = fb.recv({fbm.BYE}, 5)
        assert m is not None, "no BYE after SIGTERM"
        rc = p.wait(5)
        assert rc == 0, f"exit status {rc} after SIGTERM"
        print(f"     HELLO ok, {len(hb)} heartbeats in 1.2 s (200 ms), BYE, exit 0")
    finally:
        stop(p)
        fb.close()


def check_generation():
    fb = FakeBroker()
    p = start_worker(fb, name="generation")
    try:
        registered(fb)
        refs = {i + 1: reference(pr) for i, pr in enumerate(PROMPTS)}
        # each alone, compared with the CLI
        alone = {}
        for i, pr in enumerate(PROMPTS):
            sid = i + 1
            out, first = run_sessions(fb, {sid: dict(prompt=pr, temperature=0)})
            ptoks, toks = refs[sid]
            assert list(first[sid].prompt_tokens) == ptoks, \
                f"prompt {pr!r}: prompt_tokens {list(first[sid].prompt_tokens)} != {ptoks}"
            assert first[sid].n_pos == len(ptoks), f"n_pos {first[sid].n_pos}"
            assert out[sid] == toks, f"prompt {pr!r}: worker {out[sid]} != local {toks}"
            alone[sid] = out[sid]
        # four at once (ids 11..14), interleaved in batches
        t0 = time.monotonic()
        out, _ = run_sessions(fb, {10 + sid: dict(prompt=PROMPTS[sid - 1], temperature=0)
                                   for sid in alone})
        dt = time.monotonic() - t0
        for sid in alone:
            assert out[10 + sid] == alone[sid], f"session {sid} interleaved differs"
        n = sum(len(v) for v in out.values())
        print(f"     {len(PROMPTS)} prompts equal the CLI; 4 interleaved: {n} tokens in "
              f"{dt * 1e3:.0f} ms ({n / dt:.0f} tok/s through the fake broker)")

        # replay: prompt + first k tokens continues identically
        for sampling, seed in ((dict(temperature=0), None), (dict(temperature=0.8, seed=1234),
                                                              1234)):
            ptoks, toks = reference(PROMPTS[0], temperature=sampling["temperature"], seed=seed)
            full, _ = run_sessions(fb, {20: dict(tokens=ptoks, **sampling)})
            assert full[20] == toks, f"{sampling}: tokens-OPEN {full[20]} != local {toks}"
            for k in (1, 5, 17):
                out, first = run_sessions(fb, {21: dict(tokens=ptoks + toks[:k],
                                                        n_prompt=len(ptoks), **sampling)},
                                          n=len(toks) - k)
                assert first[21].n_pos == len(ptoks) + k, f"n_pos {first[21].n_pos}"
                assert not first[21].prompt_tokens, "prompt_tokens on a tokens OPEN"
                assert out[21] == toks[k:], \
                    f"{sampling} replay at {k}: {out[21]} != {toks[k:]}"
        print("     replay after 1, 5, 17 tokens identical (greedy and temperature 0.8)")
    finally:
        stop(p)
        fb.close()


def check_close_and_errors():
    fb = FakeBroker()
    p = start_worker(fb, name="errors")
    try:
        registered(fb)
        # CLOSE frees: a STEP afterwards is NOT_FOUND
        fb.open(30, prompt="Once upon a time", temperature=0)
        m = fb.recv({fbm.RESULT, fbm.ERROR})
        assert m and m.cmd == fbm.RESULT, f"OPEN: {m}"
        fb.close_session(30)
        fb.step(30, 1, [m.body.token])
        expect_error(fb, pb.NOT_FOUND, 30, "STEP after CLOSE")
        fb.step(31, 1, [5])
        expect_error(fb, pb.NOT_FOUND, 31, "STEP of a never-opened session")
        # invalid OPENs
        bad = [
            (40, dict(tokens=[1, 600]), "tokens"),
            (41, dict(tokens=[1] * 2048), "context"),
            (42, dict(prompt="the little dog ran " * 600), "context"),
            (43, dict(prompt="hi", top_p=2.0), "top_p"),
            (44, dict(prompt="hi", tokens=[1, 5]), "exclusive"),
            (45, dict(tokens=[1, -3]), "tokens"),
        ]
        for sid, kw, word in bad:
            fb.open(sid, **kw)
            e = expect_error(fb, pb.INVALID_ARGUMENT, sid, f"OPEN {sid}")
            assert word in e.reason, f"OPEN {sid}: reason {e.reason!r} lacks {word!r}"
        fb.step(30, 0, [1])
        expect_error(fb, pb.INVALID_ARGUMENT, 30, "STEP 0")
        out, _ = run_sessions(fb, {46: dict(prompt=PROMPTS[0], temperature=0)}, n=8)
        assert len(out[46]) == 8, "worker stopped serving after bad OPENs"
        assert p.poll() is None, "worker died"
        print("     NOT_FOUND after CLOSE; 6 invalid OPENs and STEP 0 answered "
              "INVALID_ARGUMENT with session_id")
    finally:
        stop(p)
        fb.close()


def check_overloaded():
    fb = FakeBroker()
    # 1 MiB of KV for stories260K: 51 blocks of 16 positions (816 positions)
    p = start_worker(fb, "--max-sessions", "2", "--kv-mb", "1", name="overloaded")
    try:
        registered(fb)
        fb.open(50, tokens=[1] + [7] * 999, temperature=0)
        expect_error(fb, pb.OVERLOADED, 50, "OPEN larger than the KV cache")
        fb.open(51, prompt="a", temperature=0)
        fb.open(52, prompt="b", temperature=0)
        fb.open(53, prompt="c", temperature=0)
        got = {}
        for _ in range(3):
            m = fb.recv({fbm.RESULT, fbm.ERROR})
            assert m is not None, f"missing answers: {got}"
            got[m.body.session_id] = m
        assert got[51].cmd == fbm.RESULT and got[52].cmd == fbm.RESULT, f"{got}"
        assert got[53].cmd == fbm.ERROR and got[53].body.code == pb.OVERLOADED, f"{got[53]}"
        fb.close_session(51)
        out, _ = run_sessions(fb, {54: dict(prompt="d", temperature=0)}, n=3)
        assert len(out[54]) == 3, "no room after CLOSE"
        print("     OVERLOADED for a prompt beyond the KV budget and for session 3 of 2; "
              "CLOSE makes room")
    finally:
        stop(p)
        fb.close()


def check_kv_flags():
    # F16 KV without prefix sharing still gives the CLI's greedy tokens
    fb = FakeBroker()
    p = start_worker(fb, "--kv-type", "f16", "--prefix-cache", "0", "--kv-mb", "0.5",
                     "--max-waiting", "2", name="kv-flags")
    try:
        registered(fb)
        for i, pr in enumerate(PROMPTS[:2]):
            _, toks = reference(pr)
            out, _ = run_sessions(fb, {90 + i: dict(prompt=pr, temperature=0)})
            assert out[90 + i] == toks, f"F16 KV, {pr!r}: {out[90 + i]} != {toks}"
    finally:
        stop(p)
        fb.close()
    cfg = run([tool("itt-worker"), "--model", MODEL, "--kv-type", "f16", "--kv-mb", "0.25",
               "--max-waiting", "7", "--prefix-cache", "0", "--print-config"]).stdout.decode()
    for line in ("kv_type f16", "kv_mb 0.25", "max_waiting 7", "prefix_cache 0"):
        assert line in cfg.splitlines(), f"--print-config lacks {line!r}: {cfg}"
    bad = [("--kv-type", "q8"), ("--kv-mb", "0"), ("--kv-mb", "-1"), ("--kv-mb", "nan"),
           ("--max-waiting", "-1"), ("--prefix-cache", "2")]
    for flag, val in bad:
        r = run([tool("itt-worker"), "--model", MODEL, flag, val, "--print-config"],
                check=False)
        assert r.returncode == 2, f"{flag} {val}: exit {r.returncode}, want 2"
    print("     --kv-type f16 (0.5 MiB, no prefix cache) equals the CLI; flags shown by "
          f"--print-config; {len(bad)} bad values refused with status 2")


def check_garbage():
    fb = FakeBroker()
    p = start_worker(fb, name="garbage")
    try:
        registered(fb)
        S = fbm.SIG
        frames = [
            [b"junk"],
            [S, bytes([fbm.OPEN])],
            [b"ITT\x02", bytes([fbm.HEARTBEAT]), b""],
            [S, b"\x7f", b""],
            [S, bytes([fbm.SUBMIT]), b""],
            [S, bytes([fbm.RESULT]), b"\x08\x01"],
            [S, b"\x12\x13", b""],
            [S, bytes([fbm.WELCOME]), b"\x12\x34"],
            [S, bytes([fbm.ERROR]), b"\xff\xff"],
            [S, bytes([fbm.STEP]), b"\x08"],
            [S, bytes([fbm.CLOSE]), b"\xff"],
            [S, bytes([fbm.HEARTBEAT]), b"", b"", b""],
            [S, bytes([fbm.OPEN]), b"", b"tensor"],
            [S, bytes([fbm.OPEN]), b"\xff" * 100000],
            [S, bytes([fbm.OPEN]), b"\xff\xff\xff\xff"],
        ]
        for f in frames:
            fb.send_raw(f)
        # malformed OPEN/STEP bodies are answered INVALID_ARGUMENT; nothing else is
        answered = 0
        while True:
            m = fb.recv(timeout=1.0)
            if m is None:
                break
            assert m.cmd == fbm.ERROR and m.body.code == pb.INVALID_ARGUMENT, f"got {m}"
            answered += 1
        assert answered <= 4, f"{answered} answers to garbage"
        out, _ = run_sessions(fb, {60: dict(prompt=PROMPTS[1], temperature=0)}, n=10)
        assert len(out[60]) == 10, "worker stopped serving after garbage"
        assert p.poll() is None, "worker died"
        assert len(fb.hellos) == 1, f"worker re-registered {len(fb.hellos) - 1} times"
        print(f"     {len(frames)} garbage messages: {answered} answered INVALID_ARGUMENT, "
              f"the rest dropped; still serving")
    finally:
        stop(p)
        fb.close()


def check_prefill_heartbeats():
    fb = FakeBroker(heartbeat_ms=200)
    p = start_worker(fb, "--batch-tokens", "64", "--slow-ms", "100", name="prefill")
    try:
        registered(fb)
        time.sleep(0.3)
        long_toks = [1] + [(i * 37) % 500 + 3 for i in range(1499)]
        t0 = time.monotonic()
        fb.open(70, tokens=long_toks, temperature=0)
        fb.open(71, prompt="Once upon a time", temperature=0)
        short_results = 0
        long_r = None
        while long_r is None:
            m = fb.recv({fbm.RESULT, fbm.ERROR}, timeout=30)
            assert m is not None and m.cmd == fbm.RESULT, f"got {m}"
            if m.body.session_id == 70:
                long_r = m
            else:
                short_results += 1
                if short_results < 200:
                    fb.step(71, m.body.step + 1, [m.body.token])
        t1 = long_r.t
        assert long_r.body.n_pos == 1500, f"n_pos {long_r.body.n_pos}"
        hb = [t for t in fb.heartbeat_times() if t0 <= t <= t1]
        gaps = [b - a for a, b in zip(hb, hb[1:])]
        dur = t1 - t0
        assert dur > 2.0, f"prefill took {dur:.2f} s; expected > 2.4 s with --slow-ms"
        assert len(hb) >= dur / 0.2 - 3, f"{len(hb)} heartbeats in {dur:.2f} s at 200 ms"
        # twice the interval, well inside liveness (3 x 200 ms): timers on a
        # busy 2-core machine and the Python receiver add some jitter
        assert max(gaps) < 0.4, f"largest heartbeat gap {max(gaps) * 1e3:.0f} ms"
        assert short_results >= 5, f"short session got {short_results} results during prefill"
        print(f"     1500-token prefill in {dur:.2f} s (24 chunks of 64, 100 ms each): "
              f"{len(hb)} heartbeats, largest gap {max(gaps) * 1e3:.0f} ms; "
              f"short session got {short_results} results meanwhile")
    finally:
        stop(p)
        fb.close()


def check_reconnect():
    fb = FakeBroker()
    p = start_worker(fb, name="reconnect")
    fb2 = fb3 = None
    try:
        registered(fb)
        time.sleep(0.5)
        # (a) broker back at once: the worker's heartbeats reach a broker that
        # does not know it; NOT_FOUND "unknown worker" -> HELLO
        fb.close()
        time.sleep(0.2)
        fb2 = FakeBroker(port=fb.port)
        t0 = time.monotonic()
        m = fb2.wait_hello(5)
        assert m is not None, "no HELLO within 5 s of a quick broker restart"
        da = m.t - t0
        time.sleep(0.5)
        # (b) broker away for longer than liveness x heartbeat (1.5 s): the
        # worker reconnects with backoff and says HELLO again
        fb2.close()
        time.sleep(3.0)
        fb3 = FakeBroker(port=fb.port)
        t0 = time.monotonic()
        m = fb3.wait_hello(5)
        assert m is not None, "no HELLO within 5 s of the broker coming back"
        db = m.t - t0
        out, _ = run_sessions(fb3, {80: dict(prompt=PROMPTS[0], temperature=0)}, n=5)
        assert len(out[80]) == 5, "no service after reconnect"
        print(f"     HELLO {da * 1e3:.0f} ms after a quick restart, {db * 1e3:.0f} ms after "
              f"a 3 s outage; serving again")
    finally:
        stop(p)
        for b in (fb2, fb3):
            if b:
                b.close()


def main():
    global MODEL
    MODEL = model("stories260K.gguf")
    c = Checks()
    if not MODEL:
        c.finish()
    if not os.path.exists(tool("itt-worker")):
        print(f"SKIP: {tool('itt-worker')} is not built")
        raise SystemExit(SKIP)
    try:
        c.check("registration: HELLO fields, heartbeats, BYE on SIGTERM", check_registration)
        c.check("generation: greedy equals the CLI, interleaved, replay", check_generation)
        c.check("CLOSE frees; invalid OPEN/STEP answered, worker keeps serving",
                check_close_and_errors)
        c.check("OVERLOADED: sessions and KV memory", check_overloaded)
        c.check("KV flags: --kv-type f16, --kv-mb, --max-waiting, --prefix-cache",
                check_kv_flags)
        c.check("garbage frames are dropped", check_garbage)
        c.check("heartbeats during a long chunked prefill", check_prefill_heartbeats)
        c.check("broker restart: HELLO again within 5 s", check_reconnect)
        c.check("clean exit (status 0; no leaks under ASan) on SIGTERM", check_exits)
    finally:
        WORKERS.stop_all()
    c.finish()


if __name__ == "__main__":
    main()
