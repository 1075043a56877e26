"""Guidance and early exit through `itt generate --local` (stories260K):

- --guidance-scale 0 with heads (or a negative prompt) is plain decoding,
  byte for byte, greedy and sampled;
- guidance with s = 2 on some heads, from a list or a head-set file, runs
  and changes the output; classifier-free guidance with a negative prompt
  runs and changes it;
- early exit with a threshold above every margin is the full model (all
  tokens run through, agreement 1 with --compare); a low threshold stops
  tokens early and --json reports exits per layer and the agreement;
- bad technique parameters exit 2 with a reason.
"""
import json
import os

from itt_test import Checks, SKIP, TMP, model, run, tool

PROMPT = "Once upon a time"


def gen(m, *args, n=48):
    r = run([tool("itt"), "generate", "--local", m, "--prompt", PROMPT, "-n", str(n)]
            + list(args))
    return r.stdout


def gen_json(m, *args, n=48):
    return json.loads(gen(m, "--json", *args, n=n))


def check_scale_zero_is_plain():
    m = model("stories260K.gguf")
    if not m:
        return SKIP
    for sampling in (["--temperature", "0"], ["--temperature", "0.9", "--seed", "11"]):
        plain = gen(m, *sampling)
        for extra in (["--guidance-heads", "0:1,2:5"], ["--negative-prompt", "The dog"]):
            got = gen(m, *sampling, "--guidance-scale", "0", *extra)
            assert got == plain, (sampling, extra, got[:80], plain[:80])


def check_guidance_changes_output():
    m = model("stories260K.gguf")
    if not m:
        return SKIP
    plain = gen_json(m, "--temperature", "0")
    heads = "0:1,2:5,3:0,4:3"
    g = gen_json(m, "--temperature", "0", "--guidance-heads", heads, "--guidance-scale", "2")
    assert g["guidance"]["mode"] == "heads" and g["guidance"]["heads"] == heads, g["guidance"]
    assert g["tokens"] != plain["tokens"], "guidance s=2 did not change the output"
    # the same heads from a head-set file give the same tokens
    hs = os.path.join(TMP, "guidance-local.heads")
    with open(hs, "w") as f:
        f.write("# itt-head-set model=stories260K layers=5 heads=8\n"
                + "\n".join(heads.split(",")) + "  # trailing comment\n")
    g2 = gen_json(m, "--temperature", "0", "--head-set", hs, "--guidance-scale", "2")
    assert g2["tokens"] == g["tokens"], "head-set file and head list differ"
    # a soft blend runs too
    gen_json(m, "--temperature", "0", "--guidance-heads", heads, "--guidance-scale", "2",
             "--guidance-blend", "0.5")
    c = gen_json(m, "--temperature", "0", "--negative-prompt", "The little dog",
                 "--guidance-scale", "2")
    assert c["guidance"]["mode"] == "negative_prompt", c["guidance"]
    assert c["tokens"] != plain["tokens"], "classifier-free guidance did not change the output"


def check_early_exit():
    m = model("stories260K.gguf")
    if not m:
        return SKIP
    plain = gen_json(m, "--temperature", "0")
    never = gen_json(m, "--temperature", "0", "--early-exit", "1", "--exit-layers", "1,2,3",
                     "--compare")
    ee = never["early_exit"]
    # threshold 1 can only stop a token whose top-2 probability underflows
    if ee["exits"].get("4", 0) == ee["tokens"]:
        assert never["tokens"] == plain["tokens"], "no exit, different tokens"
        assert ee["agreement"] == 1.0, ee
    low = gen_json(m, "--temperature", "0", "--early-exit", "0.2", "--exit-layers", "2,3",
                   "--compare")
    ee = low["early_exit"]
    assert ee["tokens"] == len(low["tokens"]), ee
    assert sum(ee["exits"].values()) == ee["tokens"], ee
    assert set(ee["exits"]) <= {"2", "3", "4"}, ee
    assert ee["exits"].get("4", 0) < ee["tokens"], ("nothing exited early", ee)
    assert 0.0 <= ee["agreement"] <= 1.0 and ee["compared"] == ee["tokens"], ee


def check_bad_parameters():
    m = model("stories260K.gguf")
    if not m:
        return SKIP
    bad = [
        (["--guidance-heads", "5:0", "--guidance-scale", "1"], b"layer 5 out of range"),
        (["--guidance-heads", "0:8", "--guidance-scale", "1"], b"unknown head 8"),
        (["--guidance-heads", "1:1,1:1", "--guidance-scale", "1"], b"listed twice"),
        (["--guidance-heads", "0:1", "--guidance-scale", "-1"], b"scale"),
        (["--guidance-heads", "0:1", "--guidance-scale", "1", "--guidance-blend", "1.5"],
         b"blend"),
        (["--guidance-scale", "1"], b"needs --guidance-heads"),
        (["--guidance-heads", "0:1", "--negative-prompt", "x", "--guidance-scale", "1"],
         b"exclusive"),
        (["--early-exit", "2", "--exit-layers", "1"], b"threshold"),
        (["--early-exit", "0.5", "--exit-layers", "3,1"], b"ascend"),
        (["--early-exit", "0.5"], b"--exit-layers"),
        (["--compare"], b"--early-exit"),
        (["--head-set", os.path.join(TMP, "no-such.heads"), "--guidance-scale", "1"],
         b"cannot open"),
    ]
    for args, why in bad:
        r = run([tool("itt"), "generate", "--local", m, "-n", "4"] + args, check=False)
        assert r.returncode == 2 and why in r.stderr, (args, r.returncode, r.stderr)


if __name__ == "__main__":
    c = Checks()
    c.check("--guidance-scale 0 is plain decoding, greedy and sampled", check_scale_zero_is_plain)
    c.check("guidance s=2 (heads, head-set file, negative prompt) changes the output",
            check_guidance_changes_output)
    c.check("early exit: exits per layer, agreement with the full model", check_early_exit)
    c.check("bad technique parameters exit 2 with a reason", check_bad_parameters)
    c.finish()
