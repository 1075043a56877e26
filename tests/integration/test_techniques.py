"""Per-request techniques through real processes (PROTOCOL.md, "Techniques").

Speculative decoding is exact: greedy and sampled (temperature 0.8, fixed
seed) output with drafts ("ngram" prompt lookup, "exit" shallow passes) is
token for token the plain output, on stories260K and on a small synthetic
model, on one worker and across 2 pipeline stages (--layers); a repetitive
prompt gets drafts accepted (the acceptance the worker logs is printed).
Guidance: scale 0 is plain decoding; scale 2 on some heads completes on one
worker and across 2 stages, and the 2-stage output equals the one-worker
output (the branch rows travel with the main rows in the tensor frames);
speculative decoding under guidance equals guidance alone; a negative
prompt runs on a whole-model worker and is refused by stage workers.  Bad
parameters are answered INVALID_ARGUMENT at SUBMIT, with a reason, through
the Python client and through `itt generate --broker` (exit 1).  Early
exit completes, equals `itt generate --local` with the same exit settings,
logs where tokens were decided, and its agreement with the full model over
a 128-token greedy run is printed (a fact, not asserted).  A worker driven
directly (fakebroker.py) reports n_heads in HELLO, answers a speculative
OPEN with tokens and drafts, and refuses a STEP whose pos would drop prompt
positions or leave a gap.
"""
import json
import os
import re
import time

import itt_test
from cluster import Cluster
from itt_test import Checks, SKIP, model, run, tool

import itt_client
import fakebroker as fbm
from fakebroker import FakeBroker, pb
from workerproc import Workers

PROMPTS = ["Once upon a time", "Lily and Ben"]
REPETITIVE = ("Tom had a red ball. Tom had a red ball. Tom had a red ball. "
              "Tom had a red ball. Tom had")
HEADS = ["1:0", "2:3", "3:5"]
N = 64
SAMPLED = dict(temperature=0.8, seed=1234)
GREEDY = dict(temperature=0.0)


def gen(c, prompt, n=N, **kw):
    return c.client().generate_text(c.name, prompt, max_tokens=n, deadline_ms=120000,
                                    **kw).tokens


def spec_stats(c, worker="w0", want=1, timeout=5.0):
    """(proposed, accepted) summed over the last `want` speculative sessions
    the worker logged (it logs one line when a session closes)."""
    end = time.monotonic() + timeout
    while True:
        lines = re.findall(r"speculative \((\w+)\): (\d+) drafts proposed, (\d+) accepted",
                           c.log_tail(worker, 200000))
        if len(lines) >= want or time.monotonic() > end:
            break
        time.sleep(0.1)
    lines = lines[-want:]
    return sum(int(p) for _, p, _ in lines), sum(int(a) for _, _, a in lines)


def rate(pa):
    p, a = pa
    return f"{a}/{p} drafts accepted ({100.0 * a / p:.0f}%)" if p else "no drafts proposed"


def spec_equal(c, prompts, sampling, speculative, n=N, want=None):
    """Each prompt with drafts gives the plain tokens (want[prompt], else a
    plain request on the same cluster)."""
    for p in prompts:
        plain = want[p] if want else gen(c, p, n, **sampling)
        got = gen(c, p, n, speculative=speculative, **sampling)
        assert got == plain, f"{p!r} {speculative} {sampling}: {got} != plain {plain}"


def expect_invalid(c, needle, **kw):
    try:
        gen(c, "Once upon a time", 8, **kw)
    except itt_client.IttError as e:
        assert e.code == itt_client.pb.INVALID_ARGUMENT, e
        assert needle in e.reason, f"reason {e.reason!r} lacks {needle!r}"
        return e.reason
    raise AssertionError(f"{kw} was accepted")


def expect_unavailable(c, needle, **kw):
    try:
        gen(c, "Once upon a time", 8, **kw)
    except itt_client.IttError as e:
        assert needle in e.reason, f"reason {e.reason!r} lacks {needle!r}"
        return e.reason
    raise AssertionError(f"{kw} was served by a stage route")


def cli(c, *args):
    return run([tool("itt"), "generate", "--broker", c.front, "--model", c.name, "--prompt",
                "Once upon a time", "-n", "16", "--temperature", "0", "--json", *args],
               check=False, timeout=60)


def staged(path, n_layers):
    """Two stage workers, [0, 2) and [2, n_layers)."""
    c = Cluster(path, workers=0)
    try:
        c.add_worker(["--layers", "0:2"], wait=False)
        c.add_worker(["--layers", f"2:{n_layers}"], wait=False)
        c.wait_workers(2)
    except Exception:
        c.stop()
        raise
    return c


def worker_protocol(m):
    """A worker driven directly: HELLO carries n_heads; a speculative OPEN's
    RESULT carries tokens and drafts; a STEP whose pos would drop prompt
    positions, or leave a gap, is INVALID_ARGUMENT (the session stays)."""
    fb = FakeBroker()
    workers = Workers("test_techniques")
    p, _ = workers.start(m, fb.endpoint, "direct")
    try:
        h = fb.wait_hello(10)
        assert h is not None, "no HELLO"
        assert h.body.n_heads == 8, f"HELLO n_heads {h.body.n_heads}"
        o = pb.SessionOpen(session_id=5, tokens=[1, 403, 407, 261, 378],
                           sampling=pb.SamplingParams(temperature=0.0, seed=1))
        o.speculative.draft = "ngram"
        o.speculative.max_draft = 4
        fb.send(fbm.OPEN, o)
        r = fb.recv({fbm.RESULT, fbm.ERROR})
        assert r is not None and r.cmd == fbm.RESULT, r
        assert list(r.body.tokens) == [r.body.token] and len(r.body.pieces) == 1, r.body
        for pos, needle in ((2, "prompt"), (9, "past")):
            fb.send(fbm.STEP, pb.StepRequest(session_id=5, step=1, tokens=[r.body.token],
                                             pos=pos))
            e = fb.recv({fbm.RESULT, fbm.ERROR})
            assert e is not None and e.cmd == fbm.ERROR, e
            assert e.body.code == pb.INVALID_ARGUMENT and needle in e.body.reason, e.body
        fb.send(fbm.STEP, pb.StepRequest(session_id=5, step=1,
                                         tokens=[r.body.token] + list(r.body.draft), pos=5))
        r2 = fb.recv({fbm.RESULT, fbm.ERROR})
        assert r2 is not None and r2.cmd == fbm.RESULT and r2.body.step == 1, r2
        assert 1 <= len(r2.body.tokens) <= 1 + len(r.body.draft)
        assert r2.body.n_pos == 5 + len(r2.body.tokens), r2.body
        fb.close_session(5)
    finally:
        workers.stop(p)
        fb.close()


def main():
    m = model("stories260K.gguf")
    if m is None:
        return SKIP
    for b in ("itt", "itt-broker", "itt-worker", "itt-synth"):
        if not os.access(tool(b), os.X_OK):
            print(f"SKIP: {tool(b)} is not built")
            return SKIP
    ck = Checks()
    ck.check("a worker driven directly: HELLO n_heads, speculative RESULT, STEP pos refused "
             "before the prompt's end or past the history", lambda: worker_protocol(m))
    ngram = {"draft": "ngram", "max_draft": 6}
    exitd = {"draft": "exit", "max_draft": 4, "exit_layers": 3}
    guided = {"heads": HEADS, "scale": 2.0}
    ref = {}

    c = Cluster(m, workers=1)
    try:
        def spec_one():
            for s in (GREEDY, SAMPLED):
                spec_equal(c, PROMPTS + [REPETITIVE], s, ngram)
            print(f"  ngram: {rate(spec_stats(c, want=6))}")
            for s in (GREEDY, SAMPLED):
                spec_equal(c, PROMPTS + [REPETITIVE], s, exitd)
            print(f"  exit (3 of 5 layers): {rate(spec_stats(c, want=6))}")
        ck.check("stories260K, one worker: ngram and exit drafts, greedy and sampled, "
                 "equal plain decoding", spec_one)

        def repetitive():
            gen(c, REPETITIVE, 96, speculative={"draft": "ngram", "max_draft": 8}, **GREEDY)
            p, a = spec_stats(c)
            print(f"  repetitive prompt, ngram: {rate((p, a))}")
            assert a > 0, "no draft accepted on a repetitive prompt"
        ck.check("a repetitive prompt gets n-gram drafts accepted", repetitive)

        def guidance_one():
            for p in PROMPTS:
                plain = gen(c, p, **GREEDY)
                assert gen(c, p, guidance={"heads": HEADS, "scale": 0.0}, **GREEDY) == plain
                ref[p] = gen(c, p, guidance=guided, **GREEDY)
                ref[p, "s"] = gen(c, p, guidance=guided, **SAMPLED)
                print(f"  {p!r}: scale 2 on {','.join(HEADS)} "
                      f"{'differs from' if ref[p] != plain else 'EQUALS'} plain "
                      f"({sum(a != b for a, b in zip(ref[p], plain))} of {len(plain)} "
                      f"positions differ)")
                # drafts under guidance: the guided tokens still
                assert gen(c, p, guidance=guided, speculative=ngram, **GREEDY) == ref[p]
                assert gen(c, p, guidance=guided, speculative=ngram, **SAMPLED) == \
                    ref[p, "s"]
            neg = gen(c, PROMPTS[0], guidance={"negative_prompt": "The dog was sad.",
                                               "scale": 1.5}, **GREEDY)
            print(f"  negative prompt: {len(neg)} tokens, "
                  f"{'differs from' if neg != gen(c, PROMPTS[0], **GREEDY) else 'equals'}"
                  " plain")
        ck.check("guidance on one worker: scale 0 is plain, scale 2 completes, drafts keep "
                 "the guided tokens, a negative prompt runs", guidance_one)

        def invalid():
            reasons = [
                expect_invalid(c, "9:0", guidance={"heads": ["9:0"], "scale": 2.0}),
                expect_invalid(c, "scale", guidance={"heads": ["1:0"], "scale": -1.0}),
                expect_invalid(c, "blend", guidance={"heads": ["1:0"], "scale": 1.0,
                                                     "blend": 1.5}),
                expect_invalid(c, "max_draft", speculative={"draft": "ngram", "max_draft": 0}),
                expect_invalid(c, "draft", speculative={"draft": "foo", "max_draft": 4}),
                expect_invalid(c, "early_exit.layers", early_exit={"threshold": 0.5,
                                                                   "layers": [4]}),
            ]
            for r in reasons:
                print(f"  INVALID_ARGUMENT: {r}")
            for args, needle in ((["--guidance-heads", "9:0", "--guidance-scale", "2"], "9:0"),
                                 (["--guidance-heads", "1:0", "--guidance-scale", "-1"],
                                  "scale"),
                                 (["--guidance-heads", "1:0", "--guidance-scale", "1",
                                   "--guidance-blend", "1.5"], "blend"),
                                 (["--speculative", "ngram", "--draft", "0"], "max_draft"),
                                 (["--speculative", "foo"], "draft"),
                                 (["--early-exit", "0.5", "--exit-layers", "2,7"],
                                  "early_exit")):
                r = cli(c, *args)
                err = r.stderr.decode(errors="replace")
                assert r.returncode == 1 and "INVALID_ARGUMENT" in err and needle in err, (
                    args, r.returncode, err)
        ck.check("bad technique parameters: INVALID_ARGUMENT with a reason at SUBMIT "
                 "(Python client, and itt generate --broker exit 1)", invalid)

        def cli_ok():
            plain = json.loads(cli(c).stdout)["tokens"]
            for args in (["--speculative", "ngram", "--draft", "5"],
                         ["--speculative", "exit", "--exit-draft-layers", "4"],
                         ["--guidance-heads", ",".join(HEADS), "--guidance-scale", "0"]):
                r = cli(c, *args)
                assert r.returncode == 0, r.stderr
                assert json.loads(r.stdout)["tokens"] == plain, args
        ck.check("itt generate --broker --speculative / --guidance-scale 0 equal plain",
                 cli_ok)

        def early_exit():
            ee = {"threshold": 0.9, "layers": [2, 3]}
            full = gen(c, PROMPTS[0], 128, **GREEDY)
            got = gen(c, PROMPTS[0], 128, early_exit=ee, **GREEDY)
            local = json.loads(run([tool("itt"), "generate", "--local", m, "--prompt",
                                    PROMPTS[0], "-n", "128", "--temperature", "0", "--json",
                                    "--early-exit", "0.9", "--exit-layers", "2,3"],
                                   timeout=120).stdout)["tokens"]
            assert got == local, f"worker {got} != --local {local}"
            end = time.monotonic() + 5
            while not (lines := re.findall(r"early exit: (\d+) tokens decided after layer "
                                           r"\(layer:tokens\)(.*)", c.log_tail("w0", 200000))):
                assert time.monotonic() < end, "no early-exit line in the worker's log"
                time.sleep(0.1)
            n = min(len(full), len(got))
            agree = sum(a == b for a, b in zip(full, got)) / n if n else 0.0
            first = next((i for i in range(n) if full[i] != got[i]), n)
            print(f"  early exit t=0.9 after layers 2,3: {lines[-1][0]} tokens, decided at "
                  f"(layer:tokens){lines[-1][1]}; agreement with the full model over "
                  f"{n} greedy positions: {agree:.2f} (first difference at position "
                  f"{first}; greedy continuations diverge after it)")
            # with drafts too: the early-exit tokens still
            assert gen(c, PROMPTS[0], 128, early_exit=ee, speculative=ngram, **GREEDY) == got
        ck.check("early exit completes, equals --local, logs its exit layers (agreement "
                 "printed)", early_exit)
    finally:
        c.stop()

    def stages():
        c2 = staged(m, 5)
        try:
            for p in PROMPTS:
                for s, key in ((GREEDY, p), (SAMPLED, (p, "s"))):
                    plain = gen(c2, p, **s)
                    assert gen(c2, p, speculative=ngram, **s) == plain, (p, s)
                    if key in ref:
                        got = gen(c2, p, guidance=guided, **s)
                        assert got == ref[key], f"{p!r} {s}: 2 stages {got} != 1 worker " \
                                                f"{ref[key]}"
            spec_equal(c2, [REPETITIVE], GREEDY, ngram)
            print(f"  2 stages, ngram (last stage): {rate(spec_stats(c2, 'w1', want=5))}")
            print("  " + expect_unavailable(c2, "whole-model",
                                            guidance={"negative_prompt": "x", "scale": 1.0}))
            print("  " + expect_unavailable(c2, "whole-model",
                                            early_exit={"threshold": 0.5, "layers": [1]}))
            print("  " + expect_unavailable(c2, "whole-model", speculative=exitd))
        finally:
            c2.stop()
    ck.check("2 stages [0,2)+[2,5): drafts equal plain, guidance equals one worker, "
             "whole-model techniques refused", stages)

    synth = os.path.join(itt_test.TMP, f"techniques-synth-{os.getpid()}.gguf")
    run([tool("itt-synth"), synth, "--dim", "64", "--layers", "4", "--heads", "4",
         "--kv-heads", "2", "--ffn", "128", "--vocab", "512", "--seed", "5"], timeout=120)
    try:
        def synthetic():
            with Cluster(synth, workers=1) as c1:
                want = {p: gen(c1, p, 48, **GREEDY) for p in PROMPTS}
                wants = {p: gen(c1, p, 48, **SAMPLED) for p in PROMPTS}
                spec_equal(c1, PROMPTS, GREEDY, ngram, 48, want)
                spec_equal(c1, PROMPTS, SAMPLED, ngram, 48, wants)
                spec_equal(c1, PROMPTS, GREEDY, {"draft": "exit", "max_draft": 4,
                                                 "exit_layers": 2}, 48, want)
                print(f"  synthetic, one worker: {rate(spec_stats(c1, want=2))} (exit)")
                g1 = {p: gen(c1, p, 48, guidance={"heads": ["0:1", "3:2"], "scale": 2.0},
                             **GREEDY) for p in PROMPTS}
            c2 = staged(synth, 4)
            try:
                spec_equal(c2, PROMPTS, GREEDY, ngram, 48, want)
                spec_equal(c2, PROMPTS, SAMPLED, ngram, 48, wants)
                for p in PROMPTS:
                    got = gen(c2, p, 48, guidance={"heads": ["0:1", "3:2"], "scale": 2.0},
                              **GREEDY)
                    assert got == g1[p], f"guided {p!r}: 2 stages {got} != 1 worker {g1[p]}"
            finally:
                c2.stop()
        ck.check("synthetic 4-layer model: drafts equal plain and guidance equals one worker, "
                 "on one worker and 2 stages", synthetic)
    finally:
        os.unlink(synth)
    ck.finish()


if __name__ == "__main__":
    main()
