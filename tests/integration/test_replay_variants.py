"""Replay and stages on the models of the llama family's variants, quantised.

Two synthetic models written by itt-synth and quantised by itt-quantize
(no file from outside the project is needed):
  qwen2:  qwen2 architecture (Q/K/V biases, NeoX RoPE), tied output, 2 KV
          heads of 4, RoPE base 1e6, in Q4_K_M (Q4_K, Q6_K, Q5_0 fall-backs);
  llama3: llama with 1 KV head, llama 3.1 rope_freqs and linear RoPE
          scaling, in Q5_K_M.
For each, the greedy tokens of `itt generate --local` are the reference:
  - a route of two stage workers gives the same tokens;
  - a cluster of two whole workers where the serving one is killed (SIGKILL)
    mid-stream replays the session on the other and the stream is identical;
  - a route of two stages where a stage worker is killed mid-stream is
    replayed on the spare stage worker, identical.
Exit 77 (skip) when the binaries are not built.
"""
import json
import os
import signal
import subprocess
import sys
import time

import itt_test
from cluster import Cluster
from itt_test import Checks, SKIP, run, tool

N = 160
PROMPT = "Once upon a time"

MODELS = {
    "qwen2": (["--arch", "qwen2", "--tied", "--kv-heads", "2", "--rope-base", "1000000"],
              "Q4_K_M"),
    "llama3": (["--kv-heads", "1", "--rope-freqs", "--rope-scale", "2"], "Q5_K_M"),
}


def make(name, extra, qtype):
    f32 = os.path.join(itt_test.TMP, f"replay-variants-{os.getpid()}-{name}-f32.gguf")
    out = os.path.join(itt_test.TMP, f"replay-variants-{os.getpid()}-{name}.gguf")
    run([tool("itt-synth"), f32, "--dim", "256", "--layers", "4", "--heads", "4",
         "--ffn", "512", "--vocab", "2048", "--ctx", "512", "--seed", "7"] + extra)
    run([tool("itt-quantize"), f32, out, qtype])
    os.unlink(f32)
    return out


def local(path, n=N):
    r = run([tool("itt"), "generate", "--local", path, "--prompt", PROMPT, "-n", str(n),
             "--temperature", "0", "--json"], timeout=120)
    return json.loads(r.stdout)["tokens"]


def stream(c, n=N):
    return subprocess.Popen([tool("itt"), "generate", "--broker", c.front, "--model", c.name,
                             "--temperature", "0", "-n", str(n), "--prompt", PROMPT,
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_serving_and_finish(c, p, want, candidates):
    """Kills the first worker among candidates seen with a session and at
    least 30 steps, then checks the stream ends identically with a replay."""
    try:
        victim = None
        end = time.monotonic() + 30
        while victim is None and time.monotonic() < end and p.poll() is None:
            for w in c.stats().workers:
                if w.id in candidates and w.sessions > 0 and w.steps >= 30:
                    victim = w.id
            time.sleep(0.05)
        assert victim is not None, "no worker was seen serving the stream"
        c.kill_worker(c.worker_index(victim), signal.SIGKILL)
        out, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err.decode(errors="replace")
    got = json.loads(out)
    assert got["tokens"] == want, (got["tokens"], want)
    assert got["replays"] >= 1, f"replays {got['replays']}"
    return victim, got["replays"]


def main():
    for b in ("itt", "itt-broker", "itt-worker", "itt-synth", "itt-quantize"):
        if not os.access(tool(b), os.X_OK):
            print(f"SKIP: {tool(b)} is not built")
            return SKIP
    ck = Checks()
    made = []
    try:
        for name, (extra, qtype) in MODELS.items():
            path = make(name, extra, qtype)
            made.append(path)
            want = local(path)
            assert len(want) == N, f"{name}: the reference stopped early ({len(want)} tokens)"

            def stages(path=path, want=want):
                with Cluster(path, workers=0, name=name) as c:
                    c.add_worker(["--layers", "0:2"], wait=False)
                    c.add_worker(["--layers", "2:4"], wait=False)
                    c.wait_workers(2)
                    r = c.client().generate_text(name, PROMPT, max_tokens=N, temperature=0.0,
                                                 deadline_ms=90000)
                    assert r.tokens == want, (r.tokens, want)
            ck.check(f"{name} ({qtype}): a route of two stages equals --local", stages)

            def replay_whole(path=path, want=want):
                with Cluster(path, workers=2, name=name, worker_args=["--slow-ms", "8"]) as c:
                    victim, n = kill_serving_and_finish(c, stream(c), want, {"w0", "w1"})
                    print(f"     killed {victim} mid-stream; {n} replay(s), {N} tokens identical")
            ck.check(f"{name} ({qtype}): kill -9 of the serving worker, stream identical",
                     replay_whole)

            def replay_stage(path=path, want=want):
                with Cluster(path, workers=0, name=name, worker_args=["--slow-ms", "8"]) as c:
                    for rng in ("0:2", "2:4", "2:4"):
                        c.add_worker(["--layers", rng], wait=False)
                    c.wait_workers(3)
                    victim, n = kill_serving_and_finish(c, stream(c), want, {"w1", "w2"})
                    print(f"     killed stage worker {victim} mid-stream; {n} replay(s), "
                          f"identical")
            ck.check(f"{name} ({qtype}): kill -9 of a stage worker, replayed identically",
                     replay_stage)
    finally:
        for p in made:
            try:
                os.unlink(p)
            except OSError:
                pass
    return ck.finish()


if __name__ == "__main__":
    sys.exit(main())
