"""test_arch_peer: architecture variants against llama.cpp (a cross-tool test).

For each variant (plain llama, tied head, GQA with 1 and 2 KV heads,
Q/K/V biases on llama, qwen2 = biases + NeoX RoPE, linear RoPE scaling,
rope_freqs, another RoPE base, and qwen2 with several at once) itt-synth
writes a small random model with its own SentencePiece-style vocabulary,
which llama.cpp loads as it is.  Per prompt:

  - tokenization: llama.cpp's /tokenize equals ours (itt generate's
    prompt_tokens);
  - logits, teacher-forced: llama-server generates greedily (32 tokens,
    F32 KV cache, no flash attention, top-8 log-probabilities at each position); our
    itt-dump-logits runs prompt + those tokens, and at every generated
    position our log-softmax must be within LOGPROB_TOL of each of
    llama.cpp's 8 log-probabilities, and our argmax must be llama.cpp's
    token unless the two are a near-tie (llama.cpp's top-2 gap below
    TIE_GAP).  The log-probabilities are compared centred on the mean of the
    8 (differences of logits, in effect), because ignore_eos makes llama.cpp
    drop the end-of-sequence token from its softmax, which shifts them all
    by log(1 - p_eos);
  - free greedy: `itt generate --local` against llama.cpp's own greedy
    ids; a divergence is reported with its position and is a failure only
    when llama.cpp's top-2 gap there is not a near-tie.

Random synthetic models have flat distributions (log-probs around -5 with
gaps of hundredths), which is why the logits are compared, not only ids.
Needs the peer (peer.py: $ITT_PEER_DIR); exits 77 without it.
"""
import os
import sys

import numpy as np

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import itt_test  # noqa: E402
import peer  # noqa: E402

N_GEN = 32
N_PROBS = 8
LOGPROB_TOL = 1e-3
TIE_GAP = 1e-3
# F32 KV cache and no flash attention (llama.cpp's CPU flash attention
# rounds through F16: differences ~5e-3 instead of ~5e-6)
PEER_FLAGS = ["-ctk", "f32", "-ctv", "f32", "-fa", "off"]
PROMPTS = ["Once upon a time", "the quick brown fox jumps over", "a"]

BASE = ["--dim", "128", "--layers", "3", "--heads", "4", "--kv-heads", "4", "--ffn", "256",
        "--vocab", "512", "--ctx", "256", "--seed", "3"]
VARIANTS = [
    ("llama", []),
    ("llama tied", ["--tied"]),
    ("llama GQA kv=2", ["--kv-heads", "2"]),
    ("llama GQA kv=1", ["--kv-heads", "1"]),
    ("llama Q/K/V bias", ["--qkv-bias"]),
    ("qwen2 (bias, NeoX)", ["--arch", "qwen2"]),
    ("llama rope linear x4", ["--rope-scale", "4"]),
    ("llama rope_freqs", ["--rope-freqs"]),
    ("llama freq base 5e5", ["--rope-base", "500000"]),
    # llama.cpp's qwen2 takes no rope_freqs tensor, so not that one here
    ("qwen2 tied kv=1 linear x2 base 1e6", ["--arch", "qwen2", "--tied", "--kv-heads", "1",
                                            "--rope-scale", "2", "--rope-base", "1000000",
                                            "--rms-eps", "1e-6"]),
]


def log_softmax(y):
    y = np.asarray(y, dtype=np.float64)
    m = y.max(axis=-1, keepdims=True)
    return y - m - np.log(np.exp(y - m).sum(axis=-1, keepdims=True))


def gap(top):
    v = sorted(top.values(), reverse=True)
    return v[0] - v[1] if len(v) > 1 else float("inf")


def run_check(checks, name, fn):
    """checks.check, then the check's own detail line (its return value)."""
    out = []
    checks.check(name, lambda: out.append(fn()))
    if out and out[0]:
        print("       %s" % out[0], flush=True)


def check_variant(checks, label, flags, summary):
    path = os.path.join(itt_test.TMP, "arch-peer-%d-%s.gguf" % (os.getpid(), "".join(
        c if c.isalnum() else "_" for c in label)))
    itt_test.run([itt_test.tool("itt-synth"), path] + BASE + flags)
    pieces = peer.gguf_pieces(path)
    stats = {"pos": 0, "argmax": 0, "ties": 0, "worst": 0.0, "greedy": [], "tok": 0}
    try:
        with peer.LlamaServer(path, ctx=256, extra=PEER_FLAGS) as srv:
            for prompt in PROMPTS:
                name = "%s, prompt %r" % (label, prompt)
                ids = peer.itt_prompt_tokens(path, prompt)
                theirs = srv.tokenize(prompt)
                stats["tok"] += ids == theirs

                def tokenization(ids=ids, theirs=theirs):
                    assert ids == theirs, "ours %s, llama.cpp %s" % (ids, theirs)
                    return "%d tokens" % len(ids)
                run_check(checks, name + ": tokenization", tokenization)

                gen, tops = srv.greedy_probs(ids, N_GEN, N_PROBS, ignore_eos=True,
                                             pieces=pieces)

                def logits(ids=ids, gen=gen, tops=tops):
                    assert len(gen) == N_GEN, "llama.cpp gave %d tokens" % len(gen)
                    lp = log_softmax(peer.itt_logits(path, ids + gen))
                    worst, bad = 0.0, []
                    for j, top in enumerate(tops):
                        if top is None:
                            continue
                        row = lp[len(ids) - 1 + j]
                        keys = list(top)
                        ours = np.array([row[t] for t in keys])
                        theirs = np.array([top[t] for t in keys])
                        d = np.abs((ours - ours.mean()) - (theirs - theirs.mean())).max()
                        worst = max(worst, float(d))
                        stats["pos"] += 1
                        if int(np.argmax(row)) == gen[j]:
                            stats["argmax"] += 1
                        elif gap(top) < TIE_GAP:
                            stats["ties"] += 1
                        else:
                            bad.append(j)
                    stats["worst"] = max(stats["worst"], worst)
                    assert worst <= LOGPROB_TOL, "max |logprob diff| %.2e > %.0e" % (
                        worst, LOGPROB_TOL)
                    assert not bad, "argmax differs at positions %s (not near-ties)" % bad
                    return "max |logprob diff| %.1e over %d positions" % (
                        worst, sum(t is not None for t in tops))
                run_check(checks, name + ": logits along llama.cpp's greedy path", logits)

                def greedy(prompt=prompt):
                    mine = peer.itt_greedy(path, prompt, N_GEN)
                    gen2, tops2 = srv.greedy_probs(prompt, N_GEN, N_PROBS, pieces=pieces)
                    n = 0
                    while n < min(len(mine), len(gen2)) and mine[n] == gen2[n]:
                        n += 1
                    stats["greedy"].append((n, max(len(mine), len(gen2))))
                    if n == len(mine) == len(gen2):
                        return "%d/%d ids equal" % (n, len(gen2))
                    t = tops2[n] if n < len(tops2) else None
                    if t is not None and gap(t) < TIE_GAP:
                        return "first %d ids equal, then a near-tie (gap %.1e)" % (n, gap(t))
                    raise AssertionError("ids differ from position %d (ours %d, llama.cpp %d)" %
                                         (n, len(mine), len(gen2)))
                run_check(checks, name + ": free greedy ids", greedy)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    summary.append((label, stats))


def main():
    peer.require_peer()
    peer.require_itt(("itt", "itt-synth", "itt-dump-logits"))
    checks = itt_test.Checks()
    summary = []
    for label, flags in VARIANTS:
        check_variant(checks, label, flags, summary)
    print("variant | argmax equal (near-ties) / positions | worst |logprob diff| | "
          "free greedy equal prefix")
    for label, s in summary:
        print("%-36s %3d (+%d) / %3d   %.1e   %s" % (
            label, s["argmax"], s["ties"], s["pos"], s["worst"],
            ", ".join("%d/%d" % g for g in s["greedy"])))
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
