"""Many sessions at once on one itt-worker (driven through fakebroker.py),
model stories260K.gguf.

Checks:
- 16 sessions of different prompt lengths opened at once, greedy, give token
  for token what each gives alone and what `itt generate --local
  --temperature 0` gives (F32 KV); with --kv-type f16 the same run agrees
  with F32 on nearly every token.
- A tiny KV cache (--kv-mb for 10 blocks, --max-waiting 3): of 10 sessions
  opened at once, those beyond memory wait or get OVERLOADED at once (those
  are opened again later, as the broker would); sessions are preempted
  (the worker's log says so) and every session completes with the tokens of
  an undisturbed run.  With priorities, only the low-priority session is
  preempted, and it too completes with identical tokens.
- 8 sessions with a common 64-token system prompt opened at once give the
  same tokens as on a worker without prefix sharing, and the worker's log
  shows the prefix index hits (7 sessions sharing the 4 system blocks).
"""
import json
import os
import re
import subprocess
import time

from itt_test import Checks, SKIP, TMP, model, run, tool
import fakebroker as fbm
from fakebroker import FakeBroker, pb
from workerproc import Workers

MODEL = None
EOS = 2
WORKERS = Workers("test_batching")

STORY = ("Once upon a time, in a big forest, there lived a little rabbit named Bob. Bob "
         "loved to hop and play with his friends. One day, Bob found a shiny red ball "
         "near the river. He wanted to show it to his mom, so he ran home as fast as he "
         "could. On the way, he met a kind old owl who asked him where he was going. "
         "Bob said he had found a ball and wanted to share it with everyone.")
WORDS = STORY.split()

# F32 KV block of stories260K: 2 (K, V) x 5 layers x 16 positions x 32 x 4 bytes
BLOCK_BYTES = 2 * 5 * 16 * 32 * 4


def start_worker(fb, name, *extra):
    p, log_path = WORKERS.start(MODEL, fb.endpoint, name, *extra)
    m = fb.wait_hello(10)
    assert m is not None, f"worker {name}: no HELLO within 10 s"
    return p, log_path


stop = WORKERS.stop
check_exits = WORKERS.check_exits


def read_log(path):
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")


SUMMARY = re.compile(r"prefix index (\d+) lookups, (\d+) hits, (\d+) blocks shared, (\d+) "
                     r"inserted, (\d+) evicted")


def wait_summary(path, ok, timeout=5.0):
    """The counters (lookups, hits, shared, inserted, evicted) of the last
    prefix-index summary line of the worker's log, once ok(counters) holds
    (the line is written when the worker goes idle, after the last CLOSE);
    the last one seen (or None) after timeout."""
    end = time.monotonic() + timeout
    last = None
    while True:
        found = SUMMARY.findall(read_log(path))
        if found:
            last = tuple(map(int, found[-1]))
            if ok(last):
                return last
        if time.monotonic() > end:
            return last
        time.sleep(0.05)


def reference(prompt, n):
    args = [tool("itt"), "generate", "--local", MODEL, "--prompt", prompt, "-n", str(n),
            "--temperature", "0", "--json"]
    d = json.loads(run(args).stdout)
    return d["tokens"]


def open_session(fb, sid, spec):
    o = pb.SessionOpen(session_id=sid)
    if "prompt" in spec:
        o.prompt = spec["prompt"]
    else:
        o.tokens.extend(spec["tokens"])
    if "priority" in spec:
        o.priority = spec["priority"]
    o.sampling.CopyFrom(pb.SamplingParams(temperature=0))
    fb.send(fbm.OPEN, o)


def drive(fb, specs, n, timeout=50, reopen=True):
    """Opens every session of specs {sid: spec} at once and steps each with
    its last token until n tokens or EOS; an OPEN answered OVERLOADED is
    opened again when another session ends (as the broker requeues it).
    Returns ({sid: tokens}, {sids refused at least once})."""
    out = {sid: [] for sid in specs}
    refused = set()
    pending = []
    for sid, spec in specs.items():
        open_session(fb, sid, spec)
    active = set(specs)
    end = time.monotonic() + timeout
    while active:
        m = fb.recv({fbm.RESULT, fbm.ERROR}, timeout=max(0.1, end - time.monotonic()))
        assert m is not None, f"timed out with sessions {sorted(active)} running"
        if m.cmd == fbm.ERROR:
            sid = m.body.session_id
            assert m.body.code == pb.OVERLOADED and sid in active and not out[sid], \
                f"unexpected ERROR {m.body}"
            assert reopen, f"session {sid} refused: {m.body.reason}"
            refused.add(sid)
            pending.append(sid)
            if len(pending) == len(active):  # nothing running: try again now
                time.sleep(0.05)
                open_session(fb, pending.pop(0), specs[sid])
            continue
        r = m.body
        sid = r.session_id
        assert sid in active, f"RESULT for session {sid}, which is not running"
        assert r.step == len(out[sid]), f"session {sid}: step {r.step}, want {len(out[sid])}"
        out[sid].append(r.token)
        if r.token == EOS or len(out[sid]) >= n:
            active.discard(sid)
            fb.close_session(sid)
            if pending:
                again = pending.pop(0)
                open_session(fb, again, specs[again])
        else:
            fb.step(sid, r.step + 1, [r.token])
    return out, refused


def prompt_of(i, n_words):
    """A prompt of n_words words starting at word i of the story."""
    return " ".join((WORDS * 3)[i:i + n_words])


# ---- checks -------------------------------------------------------------------


def check_sixteen_at_once():
    n = 40
    specs = {100 + i: dict(prompt=prompt_of(i * 3, 1 + (i * 7) % 23)) for i in range(16)}
    refs = {sid: reference(s["prompt"], n) for sid, s in specs.items()}
    fb = FakeBroker()
    p, _ = start_worker(fb, "sixteen")
    try:
        t0 = time.monotonic()
        together, refused = drive(fb, specs, n, reopen=False)
        dt = time.monotonic() - t0
        alone = {}
        for sid, spec in specs.items():
            o, _ = drive(fb, {sid + 100: spec}, n, reopen=False)
            alone[sid] = o[sid + 100]
        for sid in specs:
            assert together[sid] == refs[sid], \
                f"session {sid} together {together[sid]} != CLI {refs[sid]}"
            assert alone[sid] == refs[sid], f"session {sid} alone {alone[sid]} != CLI"
        ntok = sum(len(v) for v in together.values())
        lens = sorted(len(s["prompt"].split()) for s in specs.values())
        print(f"     16 sessions ({lens[0]}..{lens[-1]} words) at once: {ntok} tokens in "
              f"{dt * 1e3:.0f} ms, equal to each alone and to the CLI")
    finally:
        stop(p)
        fb.close()
    # F16 KV: the same run, compared with F32
    fb = FakeBroker()
    p, _ = start_worker(fb, "sixteen-f16", "--kv-type", "f16")
    try:
        half, _ = drive(fb, specs, n, reopen=False)
        same = sum(a == b for sid in specs for a, b in zip(half[sid], refs[sid]))
        total = sum(len(refs[sid]) for sid in specs)
        whole = sum(half[sid] == refs[sid] for sid in specs)
        print(f"     F16 KV: {same} of {total} tokens as with F32 KV, {whole} of 16 "
              f"sessions identical")
        assert same >= 0.9 * total, f"F16 KV agrees on {same} of {total} tokens only"
    finally:
        stop(p)
        fb.close()


def check_tiny_cache():
    n = 40
    specs = {200 + i: dict(prompt=prompt_of(i * 5, 24 + i % 5)) for i in range(10)}
    refs = {sid: reference(s["prompt"], n) for sid, s in specs.items()}
    fb = FakeBroker()
    kv_mb = 10.5 * BLOCK_BYTES / (1 << 20)
    p, log_path = start_worker(fb, "tiny", "--kv-mb", f"{kv_mb:.6f}", "--max-waiting", "3")
    try:
        t0 = time.monotonic()
        out, refused = drive(fb, specs, n)
        dt = time.monotonic() - t0
        for sid in specs:
            assert out[sid] == refs[sid], f"session {sid}: {out[sid]} != undisturbed {refs[sid]}"
        time.sleep(0.3)
        log = read_log(log_path)
        assert "(10 blocks of 16)" in log, "the cache is not 10 blocks"
        pre = re.findall(r"session (\d+) preempted", log)
        assert pre, "no preemption in the worker's log"
        assert refused, "no OPEN was refused with 10 sessions, 10 blocks and 3 waiting"
        again = re.findall(r"session (\d+) admitted \(priority -?\d+, after preemption\)", log)
        assert set(again) >= set(pre), f"preempted {set(pre)}, readmitted {set(again)}"
        print(f"     10 blocks, 10 sessions: {len(refused)} refused OVERLOADED (reopened), "
              f"{len(pre)} preemptions of sessions {sorted(set(map(int, pre)))}; all "
              f"{len(specs)} complete with undisturbed tokens in {dt:.1f} s")
    finally:
        stop(p)
        fb.close()


def check_priority_preemption():
    n = 60
    specs = {300: dict(prompt=prompt_of(0, 30), priority=5),
             301: dict(prompt=prompt_of(11, 28), priority=0)}
    refs = {sid: reference(s["prompt"], n) for sid, s in specs.items()}
    fb = FakeBroker()
    kv_mb = 10.5 * BLOCK_BYTES / (1 << 20)
    p, log_path = start_worker(fb, "priority", "--kv-mb", f"{kv_mb:.6f}")
    try:
        out, refused = drive(fb, specs, n, reopen=False)
        for sid in specs:
            assert out[sid] == refs[sid], f"session {sid}: {out[sid]} != undisturbed {refs[sid]}"
        time.sleep(0.3)
        log = read_log(log_path)
        pre = re.findall(r"session (\d+) preempted \(priority (-?\d+)\)", log)
        assert pre, "no preemption with two sessions of 90 positions in 10 blocks"
        assert all(sid == "301" for sid, _ in pre), f"preempted: {pre}"
        print(f"     2 sessions needing 14 blocks in 10: the priority-0 one preempted "
              f"{len(pre)} time(s), the priority-5 one never; both complete identically")
    finally:
        stop(p)
        fb.close()


def check_prefix_sharing():
    n = 30
    text = json.dumps(STORY + " " + STORY) + "\n"
    tok = run([tool("itt-tokenize"), "--bos", MODEL], input=text.encode()).stdout.split()
    ids = [int(t) for t in tok]
    assert len(ids) > 64 + 20, f"only {len(ids)} tokens"
    system = ids[:64]  # BOS and 63 tokens: 4 whole blocks
    tails = [ids[64 + 2 * i:64 + 2 * i + 3 + i] for i in range(8)]
    specs = {400 + i: dict(tokens=system + t) for i, t in enumerate(tails)}
    # without sharing, each alone
    fb = FakeBroker()
    p, _ = start_worker(fb, "prefix-off", "--prefix-cache", "0")
    try:
        refs = {}
        for sid, spec in specs.items():
            o, _ = drive(fb, {sid: spec}, n, reopen=False)
            refs[sid] = o[sid]
    finally:
        stop(p)
        fb.close()
    fb = FakeBroker()
    p, log_path = start_worker(fb, "prefix-on")
    try:
        out, _ = drive(fb, specs, n, reopen=False)
        for sid in specs:
            assert out[sid] == refs[sid], f"session {sid}: shared {out[sid]} != {refs[sid]}"
        st = wait_summary(log_path, lambda c: c[1] >= 7 and c[2] >= 28)
        assert st, "no prefix index summary in the worker's log"
        lookups, hits, blocks = st[:3]
        assert hits >= 7 and blocks >= 28, f"{hits} hits, {blocks} blocks shared"
        print(f"     8 sessions, 64-token system prompt: same tokens as without sharing; "
              f"{lookups} lookups, {hits} hits, {blocks} blocks shared")
    finally:
        stop(p)
        fb.close()


def check_mixed():
    """Shared prefixes, priorities, waiting, preemption and eviction at once,
    and a CLOSE of a session that is still waiting."""
    n = 30
    text = json.dumps(STORY + " " + STORY) + "\n"
    ids = [int(t) for t in
           run([tool("itt-tokenize"), "--bos", MODEL], input=text.encode()).stdout.split()]
    system = ids[:40]
    specs = {}
    for i in range(12):
        tail = ids[50 + 3 * i:50 + 3 * i + 2 + i % 4]
        specs[500 + i] = dict(tokens=(system if i % 2 == 0 else ids[i:i + 30]) + tail,
                              priority=(i * 5) % 3 - 1)
    fb = FakeBroker()
    p, _ = start_worker(fb, "mixed-ref", "--prefix-cache", "0")
    try:
        refs = {}
        for sid, spec in specs.items():
            o, _ = drive(fb, {sid: spec}, n, reopen=False)
            refs[sid] = o[sid]
    finally:
        stop(p)
        fb.close()
    fb = FakeBroker()
    kv_mb = 12.5 * BLOCK_BYTES / (1 << 20)
    p, log_path = start_worker(fb, "mixed", "--kv-mb", f"{kv_mb:.6f}", "--max-waiting", "5")
    try:
        out, refused = drive(fb, specs, n)
        for sid in specs:
            assert out[sid] == refs[sid], f"session {sid}: {out[sid]} != {refs[sid]}"
        # a session that waits (599 holds 10 of the 12 blocks) and is closed
        # before it runs: never answered, and its memory is not leaked
        open_session(fb, 599, dict(tokens=ids[:150]))
        open_session(fb, 598, dict(tokens=ids[:150]))
        fb.close_session(598)
        m = fb.recv({fbm.RESULT, fbm.ERROR}, timeout=10)
        assert m is not None and m.cmd == fbm.RESULT and m.body.session_id == 599, \
            f"session 599: {m}"
        fb.close_session(599)
        assert fb.recv({fbm.RESULT, fbm.ERROR}, timeout=0.3) is None, "answer for 598"
        o, _ = drive(fb, {597: dict(tokens=ids[:150])}, 3, reopen=False)
        assert len(o[597]) == 3
        st = wait_summary(log_path, lambda c: c[1] > 0)
        assert st, "no prefix index summary"
        hits, evicted = st[1], st[4]
        pre = re.findall(r"session (\d+) preempted", read_log(log_path))
        assert pre and hits > 0, f"{len(pre)} preemptions, {hits} hits"
        print(f"     12 sessions (6 sharing a prefix, priorities -1..1) in 12 blocks: "
              f"{len(refused)} refused, {len(pre)} preemptions, {hits} prefix hits, "
              f"{evicted} evictions; all tokens as without sharing or pressure")
    finally:
        stop(p)
        fb.close()


def main():
    global MODEL
    MODEL = model("stories260K.gguf")
    c = Checks()
    if not MODEL:
        c.finish()
    for t in ("itt-worker", "itt", "itt-tokenize"):
        if not os.path.exists(tool(t)):
            print(f"SKIP: {tool(t)} is not built")
            raise SystemExit(SKIP)
    try:
        c.check("16 sessions at once equal each alone and the CLI; F16 KV close",
                check_sixteen_at_once)
        c.check("tiny KV cache: wait, OVERLOADED, preemption, identical tokens",
                check_tiny_cache)
        c.check("preemption follows priority", check_priority_preemption)
        c.check("prefix sharing: same tokens, hits in the log", check_prefix_sharing)
        c.check("all at once: sharing, priorities, preemption, eviction", check_mixed)
        c.check("clean exit (status 0; no leaks under ASan) on SIGTERM", check_exits)
    finally:
        WORKERS.stop_all()
    c.finish()


if __name__ == "__main__":
    main()
