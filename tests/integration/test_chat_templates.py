#!/usr/bin/env python3
"""Chat templates (worker/engine/chat.c) against the real ones.

llama.cpp's source tree keeps the chat templates of many models in
models/templates/*.jinja ($ITT_PEER_DIR/llama.cpp, default
${TMPDIR:-/tmp}/itt-peer/llama.cpp).  For every file of a family we claim
(CLAIMS below) the detector must name that family; where jinja2 is
installed, each real template is rendered with it (as Hugging Face
transformers does: trim_blocks, lstrip_blocks, loop controls,
raise_exception; no strftime_now, so dated templates use their own default
date) for fixed conversations, and our rendering (itt-chat-render) must be
byte-identical.  A template that refuses a system message (Gemma 2) is
compared on the conversation without it.  Files of other families are
listed with what we detect, for information.  Skips (77) when the template
folder is absent.
"""
import json
import os
import sys

from itt_test import SKIP, tool, run

PEER = os.environ.get("ITT_PEER_DIR") or os.path.join(os.environ.get("TMPDIR") or "/tmp",
                                                      "itt-peer")
TEMPLATES = os.path.join(PEER, "llama.cpp", "models", "templates")

# The files whose family we claim, by name.
CLAIMS = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": "chatml",
    "Qwen-Qwen3-0.6B.jinja": "chatml",
    "Qwen3-Coder.jinja": "chatml",
    "MiMo-VL.jinja": "chatml",
    "LFM2-8B-A1B.jinja": "chatml",
    "LFM2.5-Instruct.jinja": "chatml",
    "openbmb-MiniCPM5-1B.jinja": "chatml",
    "meta-llama-Llama-3.1-8B-Instruct.jinja": "llama3.1",
    "meta-llama-Llama-3.2-3B-Instruct.jinja": "llama3.1",
    "meta-llama-Llama-3.3-70B-Instruct.jinja": "llama3.1",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": "mistral-v3-tekken",
    "unsloth-mistral-Devstral-Small-2507.jinja": "mistral-v7-tekken",
    "mistralai-Ministral-3-14B-Reasoning-2512.jinja": "mistral-v7-tekken",
    "google-gemma-2-2b-it.jinja": "gemma",
    "microsoft-Phi-3.5-mini-instruct.jinja": "phi3",
    "ibm-granite-granite-3.3-2B-Instruct.jinja": "granite",
    "ibm-granite-granite-4.0.jinja": "granite",
    "ibm-granite-granite-4.1.jinja": "granite",
}

BOS, EOS = "<s>", "</s>"

CONVERSATIONS = [
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Hello!"},
     {"role": "assistant", "content": "Hi there, how can I help?"},
     {"role": "user", "content": "Tell me a story."}],
    # white space at the edges and inside: which templates trim
    [{"role": "system", "content": " Be brief.\n"},
     {"role": "user", "content": "  Two\nlines  "},
     {"role": "assistant", "content": "\tOK. "},
     {"role": "user", "content": "Again \n"}],
]


def jinja_env():
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        return None

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    def tojson(x, indent=None, ensure_ascii=False, separators=None, sort_keys=False):
        return json.dumps(x, indent=indent, ensure_ascii=ensure_ascii, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def jinja_render(env, text, msgs):
    """jinja2's rendering, or (None, reason)."""
    try:
        return env.from_string(text).render(messages=msgs, add_generation_prompt=True,
                                            bos_token=BOS, eos_token=EOS), None
    except Exception as e:  # the template's own refusals and unsupported tags
        return None, f"{type(e).__name__}: {e}"


def ours(path, msgs):
    args = [tool("itt-chat-render"), "--file", path, "--bos", BOS, "--eos", EOS]
    for m in msgs:
        args += [m["role"], m["content"]]
    r = run(args, check=False)
    return (r.stdout.decode(), None) if r.returncode == 0 else (None, r.stderr.decode().strip())


def compare(env, path, msgs):
    """'identical', 'identical (no system)', or a reason it is not."""
    text = open(path, encoding="utf-8").read()
    want, why = jinja_render(env, text, msgs)
    note = ""
    if want is None and msgs[0]["role"] == "system":
        msgs = msgs[1:]
        want, _ = jinja_render(env, text, msgs)
        note = " (no system: the template refuses one)"
    if want is None:
        return f"jinja2 failed: {why[:80]}"
    got, err = ours(path, msgs)
    if got is None:
        return f"we refused: {err[:80]}"
    if got != want:
        i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]),
                 min(len(got), len(want)))
        return f"differs at byte {i}: jinja2 {want[i:i + 30]!r}, ours {got[i:i + 30]!r}"
    return "identical" + note


def main():
    if not os.path.isdir(TEMPLATES):
        print(f"SKIP: no template folder {TEMPLATES} (set ITT_PEER_DIR to a folder holding "
              f"a llama.cpp checkout)")
        return SKIP
    if not os.access(tool("itt-chat-render"), os.X_OK):
        print(f"SKIP: {tool('itt-chat-render')} is not built")
        return SKIP
    files = sorted(f for f in os.listdir(TEMPLATES) if f.endswith(".jinja"))
    r = run([tool("itt-chat-render"), "--detect"] + [os.path.join(TEMPLATES, f) for f in files])
    detected = {}
    for line in r.stdout.decode().splitlines():
        path, fam = line.rsplit("\t", 1)
        detected[os.path.basename(path)] = fam
    env = jinja_env()
    if env is None:
        print("note: python3-jinja2 is missing; renderings are not compared (detection only)")
    failed = 0
    print(f"{'template':52} {'family':18} result")
    for f in files:
        fam = detected.get(f, "?")
        claim = CLAIMS.get(f)
        path = os.path.join(TEMPLATES, f)
        if claim is None:
            result = "not claimed"
            if env is not None and fam != "unknown":
                result += "; " + compare(env, path, CONVERSATIONS[0])
        elif fam != claim:
            result = f"FAIL: detected as {fam}, claimed {claim}"
            failed += 1
        elif env is None:
            result = "detected"
        else:
            results = [compare(env, path, c) for c in CONVERSATIONS]
            bad = [x for x in results if not x.startswith("identical")]
            result = "identical" if not bad else "FAIL: " + bad[0]
            if not bad and any("no system" in x for x in results):
                result += " (no system: the template refuses one)"
            failed += bool(bad)
        print(f"{f:52} {fam:18} {result}")
    for f in sorted(set(CLAIMS) - set(files)):
        print(f"{f:52} {CLAIMS[f]:18} absent from this llama.cpp tree")
    n_claimed = len(set(CLAIMS) & set(files))
    print(f"{n_claimed} claimed templates, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
