"""test_models_peer: modern GGUFs through the whole cluster against llama.cpp.

A user arriving from llama.cpp with a Qwen2- or Llama-3-style GGUF must get
llama.cpp's tokens from itt.  No such model is on disk, so itt-synth writes
small random ones with llama.cpp's real vocabularies (--vocab-from its
ggml-vocab-*.gguf) and the real chat templates (--chat-template-from its
models/templates/*.jinja):

  qwen2   qwen2 arch, byte-level BPE (pre "qwen2", no BOS), tied head, GQA
          kv=2, Q/K/V biases, NeoX RoPE, the Qwen2.5 template (chatml);
  llama3  llama arch, llama-bpe vocabulary (BOS), GQA kv=2, rope_freqs
          (llama 3.1's divisors), output.weight, the Llama 3.1 template.

Each model is kept as F32 and quantised by our itt-quantize to Q4_K_M.
llama.cpp quantises activations to 8 bits on quantised weights; itt's
float path does not, so the Q4_K_M file's reference is llama.cpp on an F32
copy of it made by `llama-quantize --allow-requantize IN OUT F32` (its own
dequantisation).  Where itt has integer products on 8-bit activations as
well (`itt generate --act-quant`, on by default, and so in the workers),
the local Q4_K_M run against that copy uses --act-quant off, the workers'
ids must equal the local default run's, and that run against llama.cpp on
the Q4_K_M file itself is printed as information.

Per model and prompt (ASCII, accented Latin, CJK, emoji, blanks):
  - tokenization: itt's prompt_tokens equal llama-server's /tokenize;
  - greedy ids (16) from `itt generate --local`, through a broker + one
    whole worker, and through a broker + two stage workers (layers 0:2,
    2:4), each against llama-server's greedy ids (F32 KV, no flash
    attention): equal, or equal up to a near-tie (llama.cpp's top-2 gap
    below TIE_GAP at the first difference; printed);
Chat (system + user), F32 and Q4_K_M:
  - the rendered prompt: llama-server's /apply-template text tokenized
    (special tokens parsed, BOS added as the vocabulary says) equals the
    prompt_tokens of `itt generate --chat` (local and through the cluster);
  - the greedy reply ids equal llama.cpp's on that prompt, and on F32 the
    text of its /v1/chat/completions reply equals ours.
    llama.cpp gives the Llama 3.1 template today's date; itt renders the
    template's own default ("26 Jul 2024", chat.h), which the request
    passes to llama.cpp as chat_template_kwargs.date_string.
End of generation: each of the vocabulary's end-like tokens (<|im_end|>,
<|eot_id|>, ...), pushed by a logit bias, stops llama.cpp exactly when it
stops itt's worker.  Also: an empty prompt on the qwen2 vocabulary (no BOS: zero tokens) is
refused by `itt generate --local` and by the worker, with a reason.

Needs the peer (peer.py: $ITT_PEER_DIR, with its models/ vocabularies and
templates); exits 77 without it.
"""
import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import itt_test  # noqa: E402
import peer  # noqa: E402

N_GEN = 16
N_PROBS = 4
TIE_GAP = 1e-3
PEER_FLAGS = ["-ctk", "f32", "-ctv", "f32", "-fa", "off"]
PROMPTS = ["Once upon a time", "Grüße aus Köln: naïve café, 東京タワー 🚀",
           "  two spaces,\ta tab and 12345 digits\n"]
SYSTEM = "You are a helpful assistant. Réponds brièvement."
USER = "Wie heißt die Hauptstadt von Japan? 日本の首都は？"
LLAMA31_DATE = "26 Jul 2024"  # the template's default date (chat.h)
EOG_CANDIDATES = ["<|endoftext|>", "<|im_end|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>",
                  "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<|begin_of_text|>",
                  "<|im_start|>"]

SHAPE = ["--dim", "256", "--layers", "4", "--ffn", "512", "--ctx", "1024"]
MODELS = [
    ("qwen2", "ggml-vocab-qwen2.gguf", "Qwen-Qwen2.5-7B-Instruct.jinja",
     ["--arch", "qwen2", "--heads", "4", "--kv-heads", "2", "--tied", "--rope-base", "1000000",
      "--rms-eps", "1e-6", "--seed", "11"], {}),
    ("llama3", "ggml-vocab-llama-bpe.gguf", "meta-llama-Llama-3.1-8B-Instruct.jinja",
     ["--arch", "llama", "--heads", "8", "--kv-heads", "2", "--rope-base", "500000",
      "--rope-freqs", "--seed", "12"], {"date_string": LLAMA31_DATE}),
]


def bytes_decoder():
    """GPT-2's byte-level alphabet, inverted: character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + \
        list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def bpe_pieces(path):
    """The bytes each id prints as in llama-server's text (byte-level BPE:
    normal tokens through the byte alphabet, the others as written), and
    the ids by token text."""
    sys.path.insert(0, os.path.join(HERE, "..", "ref"))
    import gguf_read
    meta, _ = gguf_read.read_gguf(path)
    dec = bytes_decoder()
    toks = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type", [1] * len(toks))
    out, names = [], {}
    for i, (t, ty) in enumerate(zip(toks, types)):
        if isinstance(t, bytes):
            t = t.decode("utf-8", "replace")
        if ty == 1 and all(c in dec for c in t):
            out.append(bytes(dec[c] for c in t))
        else:
            out.append(t.encode("utf-8"))
        names.setdefault(t, i)
    return out, names


def gap(top):
    v = sorted(top.values(), reverse=True)
    return v[0] - v[1] if len(v) > 1 else float("inf")


def agree(ours, theirs, tops):
    """(ok, text): ids equal, or equal up to a near-tie of llama.cpp's."""
    n = 0
    while n < min(len(ours), len(theirs)) and ours[n] == theirs[n]:
        n += 1
    if n == len(ours) == len(theirs):
        return True, "%d/%d" % (n, len(theirs))
    t = tops[n] if tops is not None and n < len(tops) else None
    if t is not None and gap(t) < TIE_GAP:
        return True, "%d/%d tie" % (n, len(theirs))
    return False, "%d/%d DIFF%s" % (n, len(theirs), " (gap %.0e)" % gap(t) if t else "")


def itt_json(args, timeout=120):
    r = itt_test.run([itt_test.tool("itt"), "generate", "--temperature", "0", "--json"] + args,
                     timeout=timeout)
    return json.loads(r.stdout.decode())


def has_act_quant():
    r = itt_test.run([itt_test.tool("itt"), "generate", "--help"], check=False)
    return b"--act-quant" in r.stdout + r.stderr


class Table:
    def __init__(self):
        self.rows = []

    def add(self, *cols):
        self.rows.append(cols)

    def show(self):
        w = [max(len(str(r[i])) for r in self.rows) for i in range(len(self.rows[0]))]
        for r in self.rows:
            print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)).rstrip())


def make_models(key, vocab, tmpl, flags, vdir):
    base = os.path.join(itt_test.TMP, "models-peer-%d-%s" % (os.getpid(), key))
    f32, q4, q4f = base + "-f32.gguf", base + "-q4km.gguf", base + "-q4km-f32.gguf"
    itt_test.run([itt_test.tool("itt-synth"), f32] + SHAPE + flags + [
        "--vocab-from", os.path.join(vdir, vocab),
        "--chat-template-from", os.path.join(vdir, "templates", tmpl)])
    itt_test.run([itt_test.tool("itt-quantize"), f32, q4, "Q4_K_M"])
    itt_test.run([peer.peer_bin("llama-quantize"), "--allow-requantize", q4, q4f, "F32"])
    return f32, q4, q4f


class Run:
    """One model's checks; results go to the checks and the table."""

    def __init__(self, checks, table, key, paths, kwargs, act_quant):
        self.ck, self.tab, self.key, self.kwargs = checks, table, key, kwargs
        self.f32, self.q4, self.q4f = paths
        self.act_quant = act_quant
        self.pieces, self.special = bpe_pieces(self.f32)

    def check(self, name, fn):
        def guarded():
            try:
                return fn()
            except (subprocess.TimeoutExpired, RuntimeError, OSError, ValueError, KeyError) as e:
                raise AssertionError("%s: %s" % (type(e).__name__, e))
        self.ck.check("%s: %s" % (self.key, name), guarded)

    def llama(self, srv, prompt_ids):
        return srv.greedy_probs(prompt_ids, N_GEN, N_PROBS, pieces=self.pieces)

    def generation(self, cl, srv_f32, srv_q4f, srv_q4):
        """Tokenization and greedy ids, every prompt, every way of running."""
        for i, prompt in enumerate(PROMPTS):
            res = {}

            def run_all(prompt=prompt, res=res):
                mine = itt_json(["--local", self.f32, "-p", prompt, "-n", str(N_GEN)])
                toks = srv_f32.tokenize(prompt)
                assert mine["prompt_tokens"] == toks, "tokens: itt %s, llama.cpp %s" % (
                    mine["prompt_tokens"], toks)
                res["n"] = len(toks)
                ref = {"f32": self.llama(srv_f32, toks), "q4f": self.llama(srv_q4f, toks),
                       "q4": self.llama(srv_q4, toks)}
                runs = [("f32", "local", "f32", mine["tokens"])]
                q4_args = ["--local", self.q4, "-p", prompt, "-n", str(N_GEN)]
                if self.act_quant:
                    runs.append(("q4", "local float", "q4f",
                                 itt_json(q4_args + ["--act-quant", "off"])["tokens"]))
                    q4_default = itt_json(q4_args)["tokens"]  # information only
                else:
                    q4_default = itt_json(q4_args)["tokens"]
                    runs.append(("q4", "local float", "q4f", q4_default))
                for fmt in ("f32", "q4"):
                    for route in ("whole", "split"):
                        got = itt_json(["--broker", cl.front, "--model",
                                        "%s-%s" % (fmt, route), "-p", prompt,
                                        "-n", str(N_GEN)])
                        assert got["prompt_tokens"] == toks, "%s %s: prompt tokens %s" % (
                            fmt, route, got["prompt_tokens"])
                        # a worker runs the engine's defaults: the local default's arithmetic
                        want = "f32" if fmt == "f32" else ("itt" if self.act_quant else "q4f")
                        runs.append((fmt, "cluster " + route, want, got["tokens"]))
                ref["itt"] = (q4_default, None)  # the same engine: exactly its ids
                bad = []
                for fmt, how, against, ids in runs:
                    ok, txt = agree(ids, ref[against][0], ref[against][1])
                    if against == "itt":
                        txt = "= local" if ok else "local " + txt
                    res[(fmt, how)] = txt
                    if not ok:
                        bad.append("%s %s vs llama.cpp %s: %s (ours %s, theirs %s)" % (
                            fmt, how, against, txt, ids, ref[against][0]))
                # for information: itt on the Q4_K_M file against llama.cpp on it
                ok, txt = agree(q4_default, ref["q4"][0], ref["q4"][1])
                res[("q4", "direct")] = txt
                assert not bad, "; ".join(bad)
            self.check("prompt %d %r: tokenization and greedy ids (local, whole worker, two "
                       "stages) against llama.cpp" % (i, prompt), run_all)
            self.tab.add(self.key, "p%d" % i, res.get("n", "-"),
                         res.get(("f32", "local"), "-"), res.get(("f32", "cluster whole"), "-"),
                         res.get(("f32", "cluster split"), "-"),
                         res.get(("q4", "local float"), "-"),
                         res.get(("q4", "cluster whole"), "-"),
                         res.get(("q4", "cluster split"), "-"), res.get(("q4", "direct"), "-"))

    def chat(self, cl, srv_f32, srv_q4f):
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
        for fmt, path, srv in (("f32", self.f32, srv_f32), ("q4", self.q4, srv_q4f)):
            res = {}

            def run(fmt=fmt, path=path, srv=srv, res=res):
                body = {"messages": msgs}
                if self.kwargs:
                    body["chat_template_kwargs"] = self.kwargs
                text = srv.post("/apply-template", body)["prompt"]
                toks = srv.tokenize(text, add_special=True)
                args = ["--chat", "--system", SYSTEM, "-p", USER, "-n", str(N_GEN)]
                int8 = fmt == "q4" and self.act_quant
                mine = itt_json(["--local", path] + args + (["--act-quant", "off"] if int8
                                                            else []))
                if int8:  # what the workers run (the engine's default)
                    mine_int8 = itt_json(["--local", path] + args)["tokens"]
                assert mine["prompt_tokens"] == toks, \
                    "rendered prompt: itt %s, llama.cpp %s (%r)" % (
                        mine["prompt_tokens"], toks, text)
                theirs, tops = self.llama(srv, toks)
                ok, txt = agree(mine["tokens"], theirs, tops)
                res["local"] = txt
                bad = [] if ok else ["local: %s (ours %s, theirs %s)" % (
                    txt, mine["tokens"], theirs)]
                if fmt == "f32":
                    cc = srv.post("/v1/chat/completions", dict(
                        body, max_tokens=N_GEN, temperature=0.0, top_k=1, samplers=["top_k"],
                        seed=0))
                    reply = cc["choices"][0]["message"].get("content") or ""
                    n_prompt = cc.get("usage", {}).get("prompt_tokens")
                    res["chat/completions"] = "same" if reply == mine["text"] else "differs"
                    if n_prompt is not None and n_prompt != len(toks):
                        bad.append("/v1/chat/completions used %d prompt tokens, not %d" % (
                            n_prompt, len(toks)))
                    if reply != mine["text"] and mine["tokens"] == theirs:
                        bad.append("/v1/chat/completions replied %r, itt %r" % (
                            reply, mine["text"]))
                for route in ("whole", "split"):
                    got = itt_json(["--broker", cl.front, "--model", "%s-%s" % (fmt, route)]
                                   + args)
                    assert got["prompt_tokens"] == toks, "%s: rendered prompt %s" % (
                        route, got["prompt_tokens"])
                    if int8:  # exactly the local run with the same arithmetic
                        theirs_r, tops_r = mine_int8, None
                    else:
                        theirs_r, tops_r = theirs, tops
                    ok, txt = agree(got["tokens"], theirs_r, tops_r)
                    res[route] = ("= local" if ok else "local " + txt) if int8 else txt
                    if not ok:
                        bad.append("cluster %s: %s (ours %s, theirs %s)" % (
                            route, txt, got["tokens"], theirs_r))
                res["n"] = len(toks)
                assert not bad, "; ".join(bad)
            self.check("chat %s: rendered prompt and greedy reply (local, whole worker, two "
                       "stages) against llama.cpp" % fmt, run)
            self.tab.add(self.key, "chat " + fmt, res.get("n", "-"), res.get("local", "-"),
                         res.get("whole", "-"), res.get("split", "-"),
                         res.get("chat/completions", "-"))

    def end_of_generation(self, cl, srv):
        """Each candidate end token, pushed by a logit bias: llama.cpp stops
        on it (after sampling it) exactly when itt does (without sending it)."""
        from itt_client import Client
        ids = sorted(set(self.special[t] for t in EOG_CANDIDATES if t in self.special))
        res = {}

        def run():
            bad = []
            with Client(cl.front) as client:
                for t in ids:
                    d = srv.post("/completion", {
                        "prompt": "Hello", "n_predict": 3, "temperature": 0.0, "top_k": 1,
                        "samplers": ["top_k"], "return_tokens": True, "cache_prompt": False,
                        "logit_bias": [[t, 100.0]]})
                    theirs = [int(x) for x in d["tokens"]] == [t]
                    r = client.generate_text("f32-whole", "Hello", max_tokens=3, temperature=0,
                                             logit_bias={t: 100.0})
                    ours = r.tokens == [] and r.stop_reason == "eos"
                    res[t] = ours
                    if ours != theirs:
                        bad.append("%d: llama.cpp %s, itt %s %s" % (
                            t, d["tokens"], r.tokens, r.stop_reason))
            assert not bad, "; ".join(bad)
            return None
        self.check("end of generation: the same tokens stop both (%s)" % ", ".join(
            "%d" % t for t in ids), run)
        self.eog = ", ".join("%d%s" % (t, " stops" if res.get(t) else "") for t in ids)

    def empty_prompt(self, cl):
        def run():
            r = itt_test.run([itt_test.tool("itt"), "generate", "--local", self.f32, "-p", "",
                              "-n", "4", "--temperature", "0"], check=False, timeout=60)
            err = r.stderr.decode()
            assert r.returncode != 0 and "empty" in err, (r.returncode, err)
            r = itt_test.run([itt_test.tool("itt"), "generate", "--broker", cl.front,
                              "--model", "f32-whole", "-p", "", "-n", "4", "--temperature", "0"],
                             check=False, timeout=60)
            err = r.stderr.decode()
            assert r.returncode != 0 and "no tokens" in err, (r.returncode, err)
            return None
        self.check("an empty prompt (no BOS: zero tokens) is refused, locally and by the worker",
                   run)


def start_cluster(paths, key):
    """One broker; per format a whole worker ("f32-whole") and two stages
    ("f32-split": layers 0:2 and 2:4)."""
    from cluster import Cluster
    f32, q4, _ = paths
    c = Cluster(f32, workers=0, name="f32-whole", tag="models-peer-%d-%s" % (os.getpid(), key))
    for fmt, path in (("f32", f32), ("q4", q4)):
        c.add_worker(["--model", path, "--name", "%s-whole" % fmt], wait=False)
        c.add_worker(["--model", path, "--name", "%s-split" % fmt, "--layers", "0:2"], wait=False)
        c.add_worker(["--model", path, "--name", "%s-split" % fmt, "--layers", "2:4"], wait=False)
    c.wait_workers(6, timeout=60)
    return c


def main():
    peer.require_peer(("llama-server", "llama-quantize"))
    peer.require_itt(("itt", "itt-synth", "itt-quantize", "itt-worker", "itt-broker"))
    vdir = os.path.join(peer.peer_dir(), "llama.cpp", "models")
    for _, vocab, tmpl, _, _ in MODELS:
        for p in (os.path.join(vdir, vocab), os.path.join(vdir, "templates", tmpl)):
            if not os.path.exists(p):
                peer.skip("%s is missing from the peer's checkout" % p)
    t0 = time.monotonic()
    act_quant = has_act_quant()
    checks = itt_test.Checks()
    gen_tab, chat_tab, eog_lines = Table(), Table(), []
    gen_tab.add("model", "prompt", "tokens", "F32 local", "F32 whole", "F32 split",
                "Q4KM local", "Q4KM whole", "Q4KM split", "itt Q4KM vs llama.cpp Q4KM (info)")
    chat_tab.add("model", "chat", "prompt tokens", "local", "whole", "split",
                 "/v1/chat/completions text")
    for key, vocab, tmpl, flags, kwargs in MODELS:
        paths = make_models(key, vocab, tmpl, flags, vdir)
        try:
            run = Run(checks, gen_tab, key, paths, kwargs, act_quant)
            with start_cluster(paths, key) as cl, \
                    peer.LlamaServer(paths[0], ctx=1024, extra=PEER_FLAGS) as s_f32, \
                    peer.LlamaServer(paths[2], ctx=1024, extra=PEER_FLAGS) as s_q4f, \
                    peer.LlamaServer(paths[1], ctx=1024, extra=PEER_FLAGS) as s_q4:
                run.generation(cl, s_f32, s_q4f, s_q4)
                run.tab = chat_tab
                run.chat(cl, s_f32, s_q4f)
                run.end_of_generation(cl, s_f32)
                eog_lines.append("%s: %s" % (key, run.eog))
                if key == "qwen2":
                    run.empty_prompt(cl)
        finally:
            for p in paths:
                if os.path.exists(p):
                    os.unlink(p)
    print("\ngreedy ids equal / generated (\"tie\": then a near-tie of llama.cpp's, gap < %g); "
          "Q4KM against llama.cpp on its F32 dequantisation%s" % (
              TIE_GAP, "; Q4KM local with --act-quant off, the workers (integer products, "
              "the default) against the local default run" if act_quant else ""))
    gen_tab.show()
    print()
    chat_tab.show()
    print("\nend-of-generation candidates (id, and whether both stop on it):")
    for line in eog_lines:
        print("  " + line)
    print("\n%.1f s" % (time.monotonic() - t0))
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
