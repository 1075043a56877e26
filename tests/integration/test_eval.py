"""`itt eval` and `itt heads search` through the real command line.

- make-cloze: the same seed gives the same file, another seed another one;
  the select and test splits share no paragraph (and no text but sentences
  the data repeats in several paragraphs); every item is
  well formed;
- eval plain over 40 items of stories260K: accuracies in [0, 1] inside their
  bootstrap intervals, and two runs give the same JSON but for "timings";
- a guidance setting with s=0 scores exactly like plain (same run);
- the choice scores equal an independent computation: itt-tokenize and
  itt-dump-logits (with and without --perturb) plus NumPy's log-softmax;
- prefix sharing (KV fork) and --recompute give the same scores;
- bad input (unknown head, s < 0, u outside [0, 1], a malformed line, an
  answer out of range) is refused with a message and exit status 2;
- heads search --max-heads 1 on a tiny task runs, gives the same JSON twice
  (timings aside) and writes a head-set file that `itt eval --setting guidance:set=FILE` reads;
- eval --perplexity is itt perplexity.
"""
import json
import os
import subprocess

from itt_test import Checks, SKIP, require, run, tool, TMP, DATA

MODEL = require("stories260K.gguf", ["itt", "itt-tokenize", "itt-dump-logits"])
TEXT = os.path.join(DATA, "tinystories-valid.dev.txt") if DATA else None
ITT = tool("itt")
W = os.path.join(TMP, "test_eval")
os.makedirs(W, exist_ok=True)


def path(name):
    return os.path.join(W, name)


def make(out, seed, n=40, extra=()):
    run([ITT, "eval", "make-cloze", "--data", TEXT, "--out", out, "--seed", str(seed),
         "--n", str(n), *extra])
    with open(out, "rb") as f:
        return f.read()


def items(p):
    with open(p) as f:
        return [json.loads(line) for line in f if line.strip()]


def strip_timings(x):
    if isinstance(x, dict):
        return {k: strip_timings(v) for k, v in x.items() if k != "timings"}
    if isinstance(x, list):
        return [strip_timings(v) for v in x]
    return x


def eval_json(task, *args):
    r = run([ITT, "eval", "--local", MODEL, "--task", task, "--json", *args])
    return json.loads(r.stdout)


def need_text():
    if not TEXT or not os.path.exists(TEXT):
        print("SKIP: tinystories-valid.dev.txt is missing")
        return False
    return True


TASK = path("task40.jsonl")


def check_make_cloze():
    if not need_text():
        return SKIP
    a = make(TASK, 1)
    b = make(path("task40b.jsonl"), 1)
    c = make(path("task40c.jsonl"), 2)
    assert a == b, "same seed, different files"
    assert a != c, "another seed gave the same file"
    its = items(TASK)
    assert len(its) == 40, len(its)
    sel = [i for i in its if i["split"] == "select"]
    tst = [i for i in its if i["split"] == "test"]
    assert len(sel) == 20 and len(tst) == 20, (len(sel), len(tst))
    assert not {i["id"] for i in sel} & {i["id"] for i in tst}, "a paragraph in both splits"
    text_sel = {i["context"] for i in sel} | {c for i in sel for c in i["choices"]}
    text_tst = {i["context"] for i in tst} | {c for i in tst for c in i["choices"]}
    # only sentences the data repeats in several paragraphs may be in both
    with open(TEXT) as f:
        data = f.read()
    for t in text_sel & text_tst:
        assert data.count(t) >= 2, f"the splits share {t!r}"
    for it in its:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4, it
        assert 0 <= it["answer"] < 4 and it["context"], it
    # the answer positions are shuffled
    assert len({it["answer"] for it in its}) > 1


def check_make_cloze_bad_input():
    if not need_text():
        return SKIP
    for args, what in [(["--choices", "1"], "--choices"), (["--split-at", "1.5"], "--split-at"),
                       (["--n", "100000"], "usable paragraphs")]:
        r = run([ITT, "eval", "make-cloze", "--data", TEXT, "--out", path("bad.jsonl"), *args],
                check=False)
        err = r.stderr.decode()
        assert r.returncode == 2 and what in err, (args, r.returncode, err)
    r = run([ITT, "eval", "make-cloze", "--data", path("missing.txt"), "--out", path("x")],
            check=False)
    assert r.returncode == 1 and "cannot read" in r.stderr.decode()


def check_plain_reproducible():
    if not os.path.exists(TASK):
        return SKIP
    a = eval_json(TASK, "--setting", "plain", "--bootstrap", "300")
    b = eval_json(TASK, "--setting", "plain", "--bootstrap", "300")
    assert strip_timings(a) == strip_timings(b), "two runs differ"
    s = a["settings"][0]
    assert a["items"] == 40
    for k in ("acc_sum", "acc_norm"):
        lo, hi = s[k + "_ci"]
        assert 0 <= lo <= s[k] <= hi <= 1, (k, s[k], lo, hi)
    assert a["timings"]["seconds"] > 0 and s["timings"]["tok_s"] > 0


def check_guidance_s0_is_plain():
    if not os.path.exists(TASK):
        return SKIP
    sc = path("s0.scores")
    j = eval_json(TASK, "--setting", "plain", "--setting", "guidance:heads=1:2+3:4,s=0,u=1",
                  "--bootstrap", "200", "--scores", sc)
    p, g = j["settings"]
    for k in ("acc_sum", "acc_norm", "margin_norm", "ll_true_norm", "acc_norm_ci"):
        assert p[k] == g[k], (k, p[k], g[k])
    rows = items(sc)
    by = {}
    for r in rows:
        by.setdefault(r["id"], []).append(r["sum"])
    assert all(v[0] == v[1] for v in by.values()), "s=0 scores differ from plain"


def tokenize(texts):
    r = subprocess.run([tool("itt-tokenize"), "--bos", MODEL], capture_output=True, check=True,
                       input="".join(json.dumps(t) + "\n" for t in texts).encode())
    return [[int(x) for x in line.replace(",", " ").split()]
            for line in r.stdout.decode().splitlines()]


def dump_logits(ids, perturb=None, blend=None):
    import numpy as np
    out = path("logits.f32")
    args = [tool("itt-dump-logits"), MODEL, "--tokens", ",".join(map(str, ids)), "--out", out]
    if perturb:
        args += ["--perturb", perturb, "--blend", str(blend)]
    run(args)
    return np.fromfile(out, dtype=np.float32).reshape(len(ids), -1).astype(np.float64)


def log_softmax(x):
    import numpy as np
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def check_scores_match_reference():
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("SKIP: numpy is missing")
        return SKIP
    if not os.path.exists(TASK):
        return SKIP
    task3 = path("task3.jsonl")
    with open(TASK) as f, open(task3, "w") as g:
        g.writelines(f.readlines()[:3])
    sc = path("ref.scores")
    s, u = 2.0, 0.5
    guid = f"guidance:heads=1:2+3:4,s={s:g},u={u:g}"
    eval_json(task3, "--setting", "plain", "--setting", guid, "--bootstrap", "0",
              "--scores", sc)
    got = {(r["id"], r["setting"]): r for r in items(sc)}
    for it in items(task3):
        ctx = tokenize([it["context"]])[0]
        for c, choice in enumerate(it["choices"]):
            joint = tokenize([it["context"] + " " + choice])[0]
            assert joint[:len(ctx)] == ctx, "the joint encoding changed the context"
            tgt = joint[len(ctx):]
            l = dump_logits(joint[:-1])[len(ctx) - 1:]
            lp = dump_logits(joint[:-1], "1:2,3:4", u)[len(ctx) - 1:]
            want_p = log_softmax(l)[range(len(tgt)), tgt].sum()
            want_g = log_softmax(l + s * (l - lp))[range(len(tgt)), tgt].sum()
            rp, rg = got[(it["id"], "plain")], got[(it["id"], guid)]
            assert rp["n_tok"][c] == len(tgt), (rp["n_tok"][c], len(tgt))
            assert abs(rp["sum"][c] - want_p) < 2e-3, ("plain", rp["sum"][c], want_p)
            assert abs(rg["sum"][c] - want_g) < 2e-3, ("guidance", rg["sum"][c], want_g)


def check_recompute_same_scores():
    if not os.path.exists(TASK):
        return SKIP
    a, b = path("share.scores"), path("recompute.scores")
    setting = "guidance:heads=0:1+4:7,s=1,u=1"
    eval_json(TASK, "--setting", "plain", "--setting", setting, "--bootstrap", "0",
              "--scores", a)
    j = eval_json(TASK, "--setting", "plain", "--setting", setting, "--bootstrap", "0",
                  "--scores", b, "--recompute")
    assert j["prefix_share"] is False
    for x, y in zip(items(a), items(b)):
        assert x["n_tok"] == y["n_tok"]
        assert all(abs(p - q) < 1e-3 for p, q in zip(x["sum"], y["sum"])), (x, y)


def refused(args, what, task=None):
    r = run([ITT, "eval", "--local", MODEL, "--task", task or TASK, *args], check=False)
    err = r.stderr.decode()
    assert r.returncode == 2, f"{args}: exit {r.returncode}, {err}"
    assert what in err, f"{args}: {err!r} does not say {what!r}"


def check_bad_input():
    if not os.path.exists(TASK):
        return SKIP
    refused(["--setting", "guidance:heads=9:0,s=1,u=1"], "head 9:0")
    refused(["--setting", "guidance:heads=1:8,s=1,u=1"], "head 1:8")
    refused(["--setting", "guidance:heads=1:2,s=-1,u=1"], "scale")
    refused(["--setting", "guidance:heads=1:2,s=1,u=1.5"], "blend")
    refused(["--setting", "layer:5,s=1"], "unknown layer 5")
    refused(["--setting", "temp:0"], "temperature")
    refused(["--setting", "bogus"], "unknown setting")
    refused(["--split", "train"], "--split")
    line = items(TASK)[0]
    cases = [("bad-json.jsonl", json.dumps(line) + "\n{\"context\": \"x\", \"choices\": [\n",
              ":2:"),
             ("bad-answer.jsonl", json.dumps(dict(line, answer=4)) + "\n", "out of range"),
             ("bad-neg.jsonl", json.dumps(dict(line, answer=-1)) + "\n", "out of range"),
             ("bad-one.jsonl", json.dumps(dict(line, choices=["a"], answer=0)) + "\n",
              "at least 2"),
             ("bad-noctx.jsonl", json.dumps({"choices": ["a", "b"], "answer": 0}) + "\n",
              "context"),
             ("bad-split.jsonl", json.dumps(dict(line, split="dev")) + "\n", "split")]
    for name, text, what in cases:
        with open(path(name), "w") as f:
            f.write(text)
        refused([], what, task=path(name))
    r = run([ITT, "eval", "--broker", "tcp://127.0.0.1:1", "--task", TASK], check=False)
    assert r.returncode == 2 and "--local only" in r.stderr.decode()


def check_heads_search():
    if not need_text():
        return SKIP
    task = path("tiny.jsonl")
    make(task, 3, n=16)
    hs = path("tiny.heads")
    if os.path.exists(hs):
        os.unlink(hs)
    r = run([ITT, "heads", "search", "--local", MODEL, "--task", task, "--out", hs,
             "--max-heads", "1", "--bootstrap", "100", "--json"])
    j = json.loads(r.stdout)
    assert os.path.exists(hs), "no head-set file"
    r2 = run([ITT, "heads", "search", "--local", MODEL, "--task", task, "--out", hs,
              "--max-heads", "1", "--bootstrap", "100", "--json"])
    assert strip_timings(json.loads(r2.stdout)) == strip_timings(j), "two searches differ"
    assert 1 <= len(j["rounds"]) <= 1 and j["rounds"][0]["candidates"] == 40, j["rounds"]
    assert j["perturbation_changed_scores"] is True
    names = [s["name"] for s in j["test"]]
    assert names[0] == "plain plain" and any("temp:1.1" in n for n in names), names
    with open(hs) as f:
        text = f.read()
    assert text.startswith("# itt-head-set model=stories260K.gguf layers=5 heads=8"), text
    if j["heads"]:
        assert len(names) == 6, names
        e = eval_json(task, "--split", "test", "--setting", f"guidance:set={hs},s=2,u=1",
                      "--bootstrap", "100")
        assert e["settings"][0]["n_heads"] == 1
    else:
        assert "no head beat plain" in text


def check_perplexity_same_code():
    if not need_text():
        return SKIP
    a = run([ITT, "eval", "--local", MODEL, "--perplexity", TEXT, "--n-paragraphs", "20",
             "--json"])
    b = run([ITT, "perplexity", "--local", MODEL, "--text", TEXT, "--max-paragraphs", "20",
             "--json"])
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    for k in ("paragraphs", "tokens", "mean_nll", "ppl"):
        assert ja[k] == jb[k], (k, ja[k], jb[k])


c = Checks()
c.check("make-cloze is a pure function of the seed; splits disjoint", check_make_cloze)
c.check("make-cloze refuses bad options", check_make_cloze_bad_input)
c.check("eval plain: accuracies inside their intervals, reproducible", check_plain_reproducible)
c.check("guidance with s=0 scores exactly like plain", check_guidance_s0_is_plain)
c.check("scores equal itt-dump-logits + numpy (plain and guidance)",
        check_scores_match_reference)
c.check("KV fork and --recompute give the same scores", check_recompute_same_scores)
c.check("bad settings and task lines are refused with exit 2", check_bad_input)
c.check("heads search --max-heads 1 writes a head set, reproducibly", check_heads_search)
c.check("eval --perplexity is itt perplexity", check_perplexity_same_code)
c.finish()
