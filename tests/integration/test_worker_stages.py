"""itt-worker as pipeline stages, and its live knobs, against a fake broker
(fakebroker.py), model stories260K.gguf (5 layers).

One fake broker, several workers told apart by their ids: A holds layers
[0, 2), B [2, 5), C the whole model.  The test plays the broker of
PROTOCOL.md "Pipeline stages": OPEN/STEP to A, A's RESULT tensor forwarded
to B with the same tokens, B's token back to A as the next STEP.

Checks: greedy tokens through A then B equal C's (F32 and F16 hidden rows,
one session at a time and several at once, with chunked prefill on both
stages); the shapes of the RESULT tensors; tensor validation (missing,
unexpected, wrong rows, a text prompt past stage 0); a stage out of KV
blocks fails the session with OVERLOADED instead of preempting; TELEMETRY
every second with the fields filled, and SETTINGS (threads, batch_tokens,
slow_ms) reflected in the next one, bad values refused with
INVALID_ARGUMENT; ASSIGN to [0, 3) + [3, 5) then HELLO with the new ranges
and identical tokens; ASSIGN with a bad range or model refused; HELLO's new
fields (files with the sha256 of the file, settings, max_batch_tokens,
mem_available, weight_bytes).  Architecture variants: a qwen2 model from
itt-synth (Q/K/V biases, NeoX RoPE, one KV head, tied head, rope_freqs,
linear RoPE scaling) as [0, 2) + [2, 4) gives the tokens of its whole model.
"""
import hashlib
import os
import subprocess
import time

import numpy as np

from itt_test import Checks, SKIP, model, tool
import fakebroker as fbm
from fakebroker import FakeBroker, pb
from workerproc import Workers

MODEL = None
N_GEN = 40
DIM = 64
N_LAYERS = 5
PROMPTS = ["Once upon a time", "Lily went to the park", "The cat sat",
           "Once upon a time, there was a little girl named Lily. She loved to play outside "
           "in the park with her friends. One day, she saw a big red ball"]
WORKERS = Workers("test_worker_stages")
FB = None
IDENT = {}   # worker id -> ROUTER identity


def start(wid, *extra):
    WORKERS.start(MODEL, FB.endpoint, wid, "--id", wid, *extra)
    return wait_hello(wid)


def wait_hello(wid, timeout=10):
    """The next HELLO of worker wid (other messages are skipped)."""
    end = time.monotonic() + timeout
    while True:
        m = FB.recv({fbm.HELLO}, max(0.01, end - time.monotonic()))
        assert m is not None, f"no HELLO from {wid} within {timeout} s"
        if m.body.worker_id == wid:
            IDENT[wid] = m.ident
            return m.body


def dtype_np(dt):
    return np.float16 if dt == pb.F16 else np.float32


def drive(route, specs, n=N_GEN, reply_dtype=None, timeout=60):
    """Runs the sessions of specs {sid: OPEN kwargs} greedily through the
    workers of route (ids, stage 0 first) until n tokens or EOS; returns
    {sid: tokens}.  Checks every non-last RESULT's tensor shape."""
    idents = [IDENT[w] for w in route]
    out = {sid: [] for sid in specs}
    step_toks = {}   # sid -> tokens of the step in flight (known after stage 0 for a prompt)
    extra = {} if reply_dtype is None else {"reply_dtype": reply_dtype}
    for sid, kw in specs.items():
        FB.open(sid, ident=idents[0], temperature=0, **extra, **kw)
        step_toks[sid] = kw.get("tokens")
    active = set(specs)
    end = time.monotonic() + timeout
    while active:
        m = FB.recv({fbm.RESULT, fbm.ERROR}, timeout=max(0.1, end - time.monotonic()))
        assert m is not None, f"timed out with sessions {sorted(active)} running"
        assert m.cmd == fbm.RESULT, f"unexpected {m} from stage {idents.index(m.ident)}"
        r, stage = m.body, idents.index(m.ident)
        sid = r.session_id
        assert sid in active, f"RESULT for session {sid}, which is not running"
        assert r.step == len(out[sid]), f"session {sid}: step {r.step}, want {len(out[sid])}"
        if r.step == 0 and step_toks[sid] is None:
            assert stage == 0 and r.prompt_tokens, f"stage {stage}: no prompt_tokens"
            step_toks[sid] = list(r.prompt_tokens)
        if stage < len(route) - 1:
            rows = len(step_toks[sid])
            want_dt = reply_dtype if reply_dtype is not None else pb.F32
            assert not r.HasField("token"), f"stage {stage} sampled a token"
            assert r.hidden.rows == rows and r.hidden.cols == DIM and r.hidden.dtype == want_dt, \
                f"stage {stage}: hidden {r.hidden} for {rows} tokens"
            assert m.tensor is not None and \
                len(m.tensor) == rows * DIM * np.dtype(dtype_np(want_dt)).itemsize, \
                f"stage {stage}: tensor of {len(m.tensor or b'')} bytes for {rows} rows"
            assert np.all(np.isfinite(np.frombuffer(m.tensor, dtype_np(want_dt)))), \
                "non-finite hidden rows"
            if r.step == 0:
                FB.open(sid, tokens=step_toks[sid], hidden=r.hidden, tensor=m.tensor,
                        ident=idents[stage + 1], temperature=0, **extra)
            else:
                FB.step(sid, r.step, step_toks[sid], hidden=r.hidden, tensor=m.tensor,
                        ident=idents[stage + 1])
            continue
        assert r.HasField("token") and m.tensor is None, "last stage: no token, or a tensor"
        out[sid].append(r.token)
        if r.token == 2 or len(out[sid]) >= n:
            active.discard(sid)
            for ident in idents:
                FB.close_session(sid, ident=ident)
        else:
            step_toks[sid] = [r.token]
            FB.step(sid, r.step + 1, [r.token], ident=idents[0])
    return out


def expect_error(wid, code, sid, what, timeout=10):
    end = time.monotonic() + timeout
    while True:
        m = FB.recv({fbm.ERROR, fbm.RESULT}, max(0.01, end - time.monotonic()))
        assert m is not None, f"{what}: no answer"
        if m.ident == IDENT[wid]:
            break
    assert m.cmd == fbm.ERROR, f"{what}: got {m}, want ERROR {code}"
    assert m.body.code == code, f"{what}: code {m.body.code}, want {code}: {m.body.reason}"
    assert m.body.session_id == sid, f"{what}: session_id {m.body.session_id}, want {sid}"
    assert m.body.reason, f"{what}: empty reason"
    return m.body


def telemetry(wid, timeout=3.0, pred=None):
    """The next TELEMETRY of wid received after this call (satisfying pred,
    when given)."""
    now = time.monotonic()
    end = now + timeout
    while True:
        m = FB.recv_telemetry(max(0.01, end - time.monotonic()), ident=IDENT[wid])
        assert m is not None, f"no TELEMETRY from {wid} within {timeout} s"
        if m.t >= now and (pred is None or pred(m.body)):
            return m.body


REFS = {}


def reference(specs):
    """C's tokens for each prompt (cached)."""
    for sid, kw in specs.items():
        key = repr(sorted(kw.items()))
        if key not in REFS:
            REFS[key] = drive(["C"], {sid: kw})[sid]
    return {sid: REFS[repr(sorted(kw.items()))] for sid, kw in specs.items()}


# ---- checks -------------------------------------------------------------------


def check_hello():
    ha, hb, hc = start("A", "--layers", "0:2", "--batch-tokens", "16"), \
        start("B", "--layers", "2:5", "--batch-tokens", "8"), start("C")
    assert (ha.layer_first, ha.layer_last, hb.layer_first, hb.layer_last) == (0, 2, 2, 5), \
        f"ranges {ha.layer_first}:{ha.layer_last} {hb.layer_first}:{hb.layer_last}"
    with open(MODEL, "rb") as f:
        data = f.read()
    sha = hashlib.sha256(data).hexdigest()
    for h in (ha, hb, hc):
        assert len(h.files) == 1, f"files {h.files}"
        f = h.files[0]
        assert (f.model, f.sha256, f.bytes, f.n_layers) == ("stories260K", sha, len(data), 5), f
        assert h.settings.threads == 1 and h.settings.slow_ms == 0, h.settings
        assert h.mem_available > 0 and h.mem_available <= h.mem_bytes, h
        assert 0 < h.weight_bytes <= len(data), h.weight_bytes
    assert ha.settings.batch_tokens == 16 and ha.max_batch_tokens == 512, ha
    assert hc.settings.batch_tokens == 256 and hc.max_batch_tokens == 512, hc
    print(f"     sha256 {sha[:16]}..., weight_bytes {hc.weight_bytes}, "
          f"max_batch_tokens {hc.max_batch_tokens}")


def check_stages_equal_whole(reply_dtype=None):
    specs = {i + 1: dict(prompt=p) for i, p in enumerate(PROMPTS)}
    want = reference(specs)
    # one at a time
    for sid, kw in specs.items():
        got = drive(["A", "B"], {sid: kw}, reply_dtype=reply_dtype)[sid]
        assert got == want[sid], f"{kw}: stages {got} != whole {want[sid]}"
    # all at once (ids 11..), prompts chunked on both stages (batch 16 and 8)
    got = drive(["A", "B"], {10 + sid: kw for sid, kw in specs.items()},
                reply_dtype=reply_dtype)
    for sid in specs:
        assert got[10 + sid] == want[sid], f"session {sid} concurrent differs"
    n = sum(len(v) for v in want.values())
    print(f"     {len(specs)} prompts ({n} tokens) identical alone and concurrently")


def check_tensor_validation():
    h = np.zeros((2, DIM), np.float32)
    ti = pb.TensorInfo(dtype=pb.F32, rows=2, cols=DIM)
    FB.open(31, tokens=[1, 403], ident=IDENT["B"], temperature=0)
    expect_error("B", pb.INVALID_ARGUMENT, 31, "stage 1 OPEN without a tensor")
    FB.open(32, tokens=[1, 403], hidden=ti, tensor=h.tobytes(), ident=IDENT["A"])
    expect_error("A", pb.INVALID_ARGUMENT, 32, "stage 0 OPEN with a tensor")
    FB.open(33, prompt="Once", ident=IDENT["B"])
    r = expect_error("B", pb.INVALID_ARGUMENT, 33, "text prompt on stage 1")
    assert "prompt" in r.reason, r.reason
    FB.open(34, tokens=[1, 403, 407], hidden=ti, tensor=h.tobytes(), ident=IDENT["B"])
    expect_error("B", pb.INVALID_ARGUMENT, 34, "2 rows for 3 tokens")
    FB.open(35, tokens=[1, 403], hidden=ti, tensor=h.tobytes()[:-1], ident=IDENT["B"])
    expect_error("B", pb.INVALID_ARGUMENT, 35, "tensor a byte short")
    # a valid OPEN, then a STEP without its tensor: refused, the session stays
    FB.open(36, tokens=[1, 403], hidden=ti, tensor=h.tobytes(), ident=IDENT["B"])
    m = FB.recv({fbm.RESULT, fbm.ERROR}, 10)
    assert m is not None and m.cmd == fbm.RESULT and m.body.session_id == 36, m
    FB.step(36, 1, [5], ident=IDENT["B"])
    expect_error("B", pb.INVALID_ARGUMENT, 36, "STEP without a tensor")
    FB.step(36, 1, [5], hidden=pb.TensorInfo(dtype=pb.F16, rows=1, cols=DIM),
            tensor=np.zeros(DIM, np.float16).tobytes(), ident=IDENT["B"])
    m = FB.recv({fbm.RESULT, fbm.ERROR}, 10)
    assert m is not None and m.cmd == fbm.RESULT and m.body.step == 1 and m.body.n_pos == 3, m
    FB.close_session(36, ident=IDENT["B"])
    print("     missing, unexpected, short and mis-shaped tensors and a stage-1 prompt refused")


def check_stage_kv_full():
    # D holds [2, 5) with room for 2 blocks of 16 positions: two sessions of
    # 16 tokens fill it; the next STEP of the first needs a third block.
    blk = 2 * 3 * 16 * 32 * 4   # K and V, 3 layers, 16 positions, kv_dim 32, F32
    start("D", "--layers", "2:5", "--kv-mb", repr(2 * blk / 1048576))
    t = telemetry("D")
    assert t.kv_blocks == 2, f"kv_blocks {t.kv_blocks}, want 2"
    h = np.random.default_rng(1).standard_normal((16, DIM)).astype(np.float32)
    ti = pb.TensorInfo(dtype=pb.F32, rows=16, cols=DIM)
    for sid in (41, 42):
        FB.open(sid, tokens=list(range(1, 17)), hidden=ti, tensor=h.tobytes(),
                ident=IDENT["D"], temperature=0)
    for _ in range(2):
        m = FB.recv({fbm.RESULT, fbm.ERROR}, 10)
        assert m is not None and m.cmd == fbm.RESULT, m
    FB.step(41, 1, [5], hidden=pb.TensorInfo(dtype=pb.F32, rows=1, cols=DIM),
            tensor=h[0].tobytes(), ident=IDENT["D"])
    e = expect_error("D", pb.OVERLOADED, 42, "the later session fails")
    m = FB.recv({fbm.RESULT, fbm.ERROR}, 10)
    assert m is not None and m.cmd == fbm.RESULT and m.body.session_id == 41, m
    FB.step(42, 1, [5], hidden=pb.TensorInfo(dtype=pb.F32, rows=1, cols=DIM),
            tensor=h[0].tobytes(), ident=IDENT["D"])
    expect_error("D", pb.NOT_FOUND, 42, "the failed session is gone")
    print(f"     OVERLOADED: {e.reason}")


def check_telemetry_and_settings():
    t0 = telemetry("C")
    t1 = telemetry("C")
    for t in (t0, t1):
        assert t.worker_id == "C" and (t.layer_first, t.layer_last) == (0, 5), t
        assert t.state == "ready" and t.kv_blocks > 0 and t.cores >= 1 and t.rss_bytes > 0, t
        assert t.settings.threads == 1 and t.settings.batch_tokens == 256, t
    assert 0.7 <= (t1.time_ms - t0.time_ms) / 1000 <= 1.5, \
        f"TELEMETRY {t1.time_ms - t0.time_ms} ms apart"
    FB.send(fbm.SETTINGS, pb.Settings(threads=2, batch_tokens=8, slow_ms=20), ident=IDENT["C"])
    t = telemetry("C", pred=lambda t: t.settings.threads == 2)
    assert (t.settings.batch_tokens, t.settings.slow_ms) == (8, 20), t.settings
    # a session with the new knobs: same tokens, steps of at least slow_ms
    specs = {51: dict(prompt=PROMPTS[3])}
    want = reference({1: specs[51]})[1]
    got = drive(["C"], specs, n=10)[51]
    assert got == want[:10], f"after SETTINGS: {got} != {want[:10]}"
    busy = telemetry("C", pred=lambda t: t.HasField("ms_per_row_layer"), timeout=3)
    assert busy.step_ms >= 20 and busy.rows_per_step <= 8 and busy.busy > 0, busy
    assert abs(busy.ms_per_row_layer - busy.step_ms / (busy.rows_per_step * 5)) < 1e-6, busy
    idle = telemetry("C", pred=lambda t: not t.HasField("ms_per_row_layer"), timeout=4)
    # kv_used counts the prompt blocks the prefix index keeps, too
    assert idle.sessions == 0 and idle.tokens_per_s == 0 and idle.busy == 0, idle
    assert idle.kv_used <= idle.kv_blocks, idle
    for bad, field in ((pb.Settings(threads=0), "threads"), (pb.Settings(threads=65), "threads"),
                       (pb.Settings(batch_tokens=513), "batch_tokens"),
                       (pb.Settings(batch_tokens=0), "batch_tokens"),
                       (pb.Settings(threads=4, slow_ms=10001), "slow_ms")):
        FB.send(fbm.SETTINGS, bad, ident=IDENT["C"])
        e = expect_error("C", pb.INVALID_ARGUMENT, 0, f"SETTINGS {bad}")
        assert field in e.reason, e.reason
    t = telemetry("C")
    assert (t.settings.threads, t.settings.batch_tokens, t.settings.slow_ms) == (2, 8, 20), t
    FB.send(fbm.SETTINGS, pb.Settings(threads=1, batch_tokens=256, slow_ms=0), ident=IDENT["C"])
    telemetry("C", pred=lambda t: t.settings.slow_ms == 0)
    print(f"     step_ms {busy.step_ms:.1f} with slow_ms 20, busy {busy.busy:.2f}; "
          f"5 bad SETTINGS refused")


def check_assign():
    # a session on A, then ASSIGN: it is dropped (no answer), OPEN while
    # loading is UNAVAILABLE (or, if loading already finished, served)
    FB.open(61, prompt=PROMPTS[0], ident=IDENT["A"], temperature=0)
    m = FB.recv({fbm.RESULT, fbm.ERROR}, 10)
    assert m is not None and m.cmd == fbm.RESULT, m
    FB.send(fbm.ASSIGN, pb.Assign(model="stories260K", layer_first=0, layer_last=3),
            ident=IDENT["A"])
    FB.open(62, prompt=PROMPTS[0], ident=IDENT["A"], temperature=0)
    before = []   # what A sent before its HELLO
    while True:
        m = FB.recv({fbm.HELLO, fbm.RESULT, fbm.ERROR}, 10)
        assert m is not None, "no HELLO after ASSIGN"
        if m.cmd == fbm.HELLO and m.body.worker_id == "A":
            break
        before.append(m)
    h = m.body
    assert (h.layer_first, h.layer_last) == (0, 3), f"HELLO range {h.layer_first}:{h.layer_last}"
    assert all(m.body.session_id == 62 for m in before), f"before HELLO: {before}"
    if before and before[0].cmd == fbm.ERROR:
        assert before[0].body.code == pb.UNAVAILABLE, before[0]
        assert before[0].body.reason == "loading layers", before[0]
        note = "OPEN while loading: UNAVAILABLE"
    else:
        # the OPEN came after the load: served with the new range
        m = FB.recv({fbm.RESULT, fbm.ERROR}, 5) if not before else before[0]
        assert m is not None and m.cmd == fbm.RESULT and m.body.session_id == 62, m
        FB.close_session(62, ident=IDENT["A"])
        note = "OPEN while loading: not observed (it came after the load)"
    FB.step(61, 1, [5], ident=IDENT["A"])
    expect_error("A", pb.NOT_FOUND, 61, "the session ASSIGN dropped")
    t = telemetry("A")
    assert (t.layer_first, t.layer_last, t.state) == (0, 3, "ready"), t
    FB.send(fbm.ASSIGN, pb.Assign(model="stories260K", layer_first=3, layer_last=5),
            ident=IDENT["B"])
    h = wait_hello("B")
    assert (h.layer_first, h.layer_last) == (3, 5), f"HELLO range {h.layer_first}:{h.layer_last}"
    specs = {70 + i: dict(prompt=p) for i, p in enumerate(PROMPTS)}
    want = reference(specs)
    got = drive(["A", "B"], specs)
    for sid in specs:
        assert got[sid] == want[sid], f"[0,3)+[3,5) session {sid}: {got[sid]} != {want[sid]}"
    for bad in (pb.Assign(model="stories260K", layer_first=3, layer_last=3),
                pb.Assign(model="stories260K", layer_first=0, layer_last=6),
                pb.Assign(model="stories260K", layer_first=4, layer_last=2),
                pb.Assign(model="other", layer_first=0, layer_last=5)):
        FB.send(fbm.ASSIGN, bad, ident=IDENT["A"])
        expect_error("A", pb.INVALID_ARGUMENT, 0, f"ASSIGN {bad}")
    assert FB.recv({fbm.HELLO}, 0.5) is None, "HELLO after a refused ASSIGN"
    t = telemetry("A")
    assert (t.layer_first, t.layer_last) == (0, 3), t
    print(f"     [0,3)+[3,5) identical for {len(specs)} prompts; bad ASSIGNs refused; {note}")


def check_qwen2_stages():
    path = os.path.join(os.environ.get("ITT_TMP_DIR", "/tmp"),
                        "test_worker_stages-qwen2-%d.gguf" % os.getpid())
    subprocess.run([tool("itt-synth"), path, "--arch", "qwen2", "--dim", str(DIM), "--layers",
                    "4", "--heads", "4", "--kv-heads", "1", "--ffn", "128", "--vocab", "300",
                    "--ctx", "256", "--tied", "--rope-freqs", "--rope-scale", "2", "--seed", "9"],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        for wid, extra in (("QA", ["--layers", "0:2"]), ("QB", ["--layers", "2:4"]),
                           ("QC", [])):
            WORKERS.start(path, FB.endpoint, wid, "--id", wid, *extra)
            wait_hello(wid)
        specs = {90 + i: dict(prompt=p) for i, p in enumerate(PROMPTS)}
        want = {sid: drive(["QC"], {sid: kw})[sid] for sid, kw in specs.items()}
        got = drive(["QA", "QB"], specs)
        for sid in specs:
            assert got[sid] == want[sid], f"qwen2 session {sid}: {got[sid]} != {want[sid]}"
        n = sum(len(v) for v in want.values())
        print(f"     {len(specs)} prompts ({n} tokens) identical through the stages")
    finally:
        os.unlink(path)


def check_exits():
    WORKERS.stop_all()
    WORKERS.check_exits()


def main():
    global MODEL, FB
    MODEL = model("stories260K.gguf")
    c = Checks()
    if not MODEL:
        raise SystemExit(SKIP)
    if not os.path.exists(tool("itt-worker")):
        print(f"SKIP: {tool('itt-worker')} is not built")
        raise SystemExit(SKIP)
    FB = FakeBroker()
    try:
        c.check("HELLO: ranges, files (sha256), settings, memory, weights", check_hello)
        c.check("stages [0,2)+[2,5) equal the whole model (F32 rows)", check_stages_equal_whole)
        c.check("stages [0,2)+[2,5) equal the whole model (F16 rows)",
                lambda: check_stages_equal_whole(pb.F16))
        c.check("tensor validation on stage 0 and stage 1", check_tensor_validation)
        c.check("a stage out of KV blocks fails the session (OVERLOADED)", check_stage_kv_full)
        c.check("TELEMETRY every second; SETTINGS applied, bad ones refused",
                check_telemetry_and_settings)
        c.check("ASSIGN [0,3)+[3,5): HELLO, identical tokens; bad ASSIGN refused", check_assign)
        c.check("qwen2 variant: stages [0,2)+[2,4) equal the whole model", check_qwen2_stages)
        c.check("clean exit (status 0) on SIGTERM", check_exits)
    finally:
        WORKERS.stop_all()
        FB.close()
    c.finish()


if __name__ == "__main__":
    main()
