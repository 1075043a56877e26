"""Known outputs of the trained models, through the real command line.

- stories260K.gguf, empty prompt, greedy, 256 tokens: stdout equals the
  llama2.c output byte for byte (llama2.c prints a final newline, as we do);
- the same from stories260K.bin + tok512.bin converted by itt-convert, and
  the logits of both files bit-identical;
- babyllama-tok105 converted: greedy output equals its known output;
- perplexity over the first 200 paragraphs of the TinyStories dev text:
  19,380 predicted tokens, mean NLL 1.4388 within 0.1%.
"""
import json
import os

from itt_test import Checks, SKIP, model, run, tool, TMP, DATA


def greedy(path, n=256):
    r = run([tool("itt"), "generate", "--local", path, "--temperature", "0", "-n", str(n)])
    return r.stdout


def expected(name):
    with open(model(name), "rb") as f:
        return f.read()


def check_gguf_greedy():
    m = model("stories260K.gguf")
    if not m:
        return SKIP
    out = greedy(m)
    want = expected("stories260K.greedy.expected.txt")
    assert out == want, f"got {out[:120]!r}... ({len(out)} bytes), want {len(want)} bytes"


def converted(binname, tokname, out):
    b, t = model(binname), model(tokname)
    if not b or not t:
        return None
    path = os.path.join(TMP, out)
    run([tool("itt-convert"), b, t, path])
    return path


def check_converted_stories():
    path = converted("stories260K.bin", "tok512.bin", "stories260K-converted.gguf")
    if not path:
        return SKIP
    out = greedy(path)
    assert out == expected("stories260K.greedy.expected.txt"), f"got {out[:120]!r}"
    # logits bit-identical to the published GGUF over a 40-token sequence
    toks = ",".join(str(x) for x in [1] + [(i * 37) % 509 + 3 for i in range(39)])
    a, b = os.path.join(TMP, "logits-a.f32"), os.path.join(TMP, "logits-b.f32")
    run([tool("itt-dump-logits"), model("stories260K.gguf"), "--tokens", toks, "--out", a])
    run([tool("itt-dump-logits"), path, "--tokens", toks, "--out", b])
    with open(a, "rb") as fa, open(b, "rb") as fb:
        da, db = fa.read(), fb.read()
    assert len(da) == 40 * 512 * 4 and da == db, "logits differ between the two files"


def check_babyllama():
    path = converted("babyllama-tok105-model5000.bin", "tok105.bin", "babyllama.gguf")
    if not path:
        return SKIP
    out = greedy(path)
    want = expected("babyllama-tok105.greedy.expected.txt")
    assert out == want, f"got {out[-60:]!r}, want {want[-60:]!r}"


def check_perplexity():
    m = model("stories260K.gguf")
    if not m or not DATA:
        return SKIP
    text = os.path.join(DATA, "tinystories-valid.dev.txt")
    r = run([tool("itt"), "perplexity", "--local", m, "--text", text, "--max-paragraphs", "200",
             "--json"])
    d = json.loads(r.stdout)
    assert d["paragraphs"] == 200, d
    assert d["tokens"] == 19380, d
    assert abs(d["mean_nll"] - 1.4388) / 1.4388 < 1e-3, d


def check_generate_json():
    m = model("stories260K.gguf")
    if not m:
        return SKIP
    r = run([tool("itt"), "generate", "--local", m, "--prompt", "Once upon a time", "-n", "20",
             "--seed", "7", "--json"])
    d = json.loads(r.stdout)
    assert d["prompt_tokens"][0] == 1 and len(d["tokens"]) <= 20, d
    for key in ("text", "timings", "seed"):
        assert key in d, key
    r2 = run([tool("itt"), "generate", "--local", m, "--prompt", "Once upon a time", "-n", "20",
              "--seed", "7", "--json"])
    assert json.loads(r2.stdout)["tokens"] == d["tokens"], "same seed, different tokens"


def check_bad_input():
    m = model("stories260K.gguf")
    if not m:
        return SKIP
    for args, code in [(["--top-p", "2"], 2), (["-n", "-1"], 2), (["--temperature", "x"], 2),
                       (["--bogus"], 2)]:
        r = run([tool("itt"), "generate", "--local", m] + args, check=False)
        assert r.returncode == code and r.stderr, (args, r.returncode, r.stderr)
    r = run([tool("itt"), "generate", "--local", os.path.join(TMP, "missing.gguf")], check=False)
    assert r.returncode == 1 and b"cannot load" in r.stderr, r.stderr


if __name__ == "__main__":
    c = Checks()
    c.check("stories260K.gguf greedy 256 tokens equals llama2.c output", check_gguf_greedy)
    c.check("converted stories260K.bin: same output, bit-identical logits", check_converted_stories)
    c.check("converted babyllama-tok105: greedy output equals llama2.c", check_babyllama)
    c.check("perplexity over 200 paragraphs: 19380 tokens, NLL 1.4388", check_perplexity)
    c.check("generate --json fields and seed reproducibility", check_generate_json)
    c.check("bad command-line input is refused with a reason", check_bad_input)
    c.finish()
