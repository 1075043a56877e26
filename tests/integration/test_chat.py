#!/usr/bin/env python3
"""Chat through the cluster: SUBMIT with messages (PROTOCOL.md "Chat").

stories260K has no chat template, so the worker renders with the fallback
(chatml) unless the request names a template.  Every greedy reply is
compared token for token (prompt tokens too) with `itt generate --local
--chat`, which renders in process: a user message (Python client), a system
message with an explicit template, a --messages file through `itt generate
--broker --chat`, and a route of two stages (only stage 0 renders; it
reports the end-of-turn id that the last stage samples).  The
refusals: messages with a prompt, a bad role, a late system message,
chat_template without messages, too many messages, too much content
(INVALID_ARGUMENT from the broker), an unknown template name and turns a
template refuses (UNAVAILABLE with the worker's reason); and the CLI's
usage errors.  An unrecognised model template needs a name in the request
or itt-worker --chat-template.  The end of the assistant's turn: a copy of stories260K whose
last token is <|im_end|> (a control token) and whose file has a chatml
template (or one we do not recognise): with that token pushed by a logit
bias, a conversation ends at once ("eos", nothing sent) through the
cluster, while a plain prompt generates it like any token; --local renders
the same prompt tokens.

Needs ITT_MODEL_DIR (stories260K.gguf) and the built binaries; skips (77)
without them.
"""
import json
import os
import struct
import subprocess

import itt_test
from itt_test import Checks, run, tool

MODEL = itt_test.require("stories260K.gguf", ("itt", "itt-broker", "itt-worker"))

from cluster import Cluster  # noqa: E402
from itt_client import Client, IttError  # noqa: E402  (cluster.py put it on the path)

NAME = "stories260K"
N = 24


def local(args):
    r = run([tool("itt"), "generate", "--local", MODEL, "--temperature", "0", "-n", str(N),
             "--chat", "--json"] + args, timeout=60)
    return json.loads(r.stdout)


# GGUF value types: scalar sizes; 8 is a string, 9 an array.
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _skip_value(b, off, t):
    if t in _SIZES:
        return off + _SIZES[t]
    if t == 8:
        return off + 8 + struct.unpack_from("<Q", b, off)[0]
    et, n = struct.unpack_from("<IQ", b, off)
    off += 12
    if et in _SIZES:
        return off + n * _SIZES[et]
    for _ in range(n):
        off = _skip_value(b, off, et)
    return off


def _gstr(s):
    s = s.encode()
    return struct.pack("<Q", len(s)) + s


def gguf_with_chat(src, dst, template, eot_id, eot="<|im_end|>"):
    """Copies the GGUF src to dst with token eot_id renamed eot (CONTROL) and
    tokenizer.chat_template set to template."""
    b = open(src, "rb").read()
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", b, 0)
    off, kvs, align = 24, [], 32
    for _ in range(n_kv):
        klen = struct.unpack_from("<Q", b, off)[0]
        key = b[off + 8:off + 8 + klen].decode()
        t = struct.unpack_from("<I", b, off + 8 + klen)[0]
        vstart = off + 12 + klen
        end = _skip_value(b, vstart, t)
        raw = b[off:end]
        if key == "general.alignment":
            align = struct.unpack_from("<I", b, vstart)[0]
        if key == "tokenizer.ggml.tokens":
            n = struct.unpack_from("<Q", b, vstart + 4)[0]
            p, toks = vstart + 12, []
            for _ in range(n):
                ln = struct.unpack_from("<Q", b, p)[0]
                toks.append(b[p + 8:p + 8 + ln].decode())
                p += 8 + ln
            toks[eot_id] = eot
            raw = _gstr(key) + struct.pack("<IIQ", 9, 8, n) + b"".join(map(_gstr, toks))
        elif key == "tokenizer.ggml.token_type":
            et, n = struct.unpack_from("<IQ", b, vstart)
            types = list(struct.unpack_from(f"<{n}i", b, vstart + 12))
            types[eot_id] = 3  # CONTROL
            raw = _gstr(key) + struct.pack(f"<IIQ{n}i", 9, et, n, *types)
        if key != "tokenizer.chat_template":
            kvs.append(raw)
        off = end
    kvs.append(_gstr("tokenizer.chat_template") + struct.pack("<I", 8) + _gstr(template))
    tstart = off
    for _ in range(n_tensors):
        nlen = struct.unpack_from("<Q", b, off)[0]
        off += 8 + nlen
        nd = struct.unpack_from("<I", b, off)[0]
        off += 4 + 8 * nd + 4 + 8
    tinfo = b[tstart:off]
    data = b[(off + align - 1) // align * align:]
    head = struct.pack("<4sIQQ", magic, version, n_tensors, len(kvs)) + b"".join(kvs) + tinfo
    head += b"\0" * ((-len(head)) % align)
    with open(dst, "wb") as f:
        f.write(head + data)


def same_as_local(res, args):
    want = local(args)
    assert res.prompt_tokens == want["prompt_tokens"], \
        f"prompt tokens {res.prompt_tokens} != local {want['prompt_tokens']}"
    assert res.tokens == want["tokens"], f"tokens {res.tokens} != local {want['tokens']}"
    return want


def refused(client, code, needle, **kw):
    try:
        client.generate_text(NAME, max_tokens=4, temperature=0, **kw)
    except IttError as e:
        assert e.name == code, f"{e.name}: {e.reason} (expected {code})"
        assert needle in e.reason, f"reason {e.reason!r} lacks {needle!r}"
        return
    raise AssertionError(f"not refused (expected {code})")


class Guarded(Checks):
    def check(self, name, fn):
        def guarded():
            try:
                return fn()
            except (subprocess.TimeoutExpired, RuntimeError, OSError, ValueError,
                    IttError) as e:
                raise AssertionError(f"{type(e).__name__}: {e}")
        super().check(name, guarded)


def main():
    ck = Guarded()
    tmp = os.path.join(itt_test.TMP, f"test_chat-{os.getpid()}.json")
    conv = [{"role": "system", "content": "You tell stories."},
            {"role": "user", "content": "Tell me about a cat."},
            {"role": "assistant", "content": "Once upon a time there was a cat."},
            {"role": "user", "content": "What did the cat do?"}]
    with open(tmp, "w") as f:
        json.dump(conv, f)

    with Cluster(MODEL, workers=1, name=NAME) as c, Client(c.front) as client:

        def user_message():
            res = client.generate_text(NAME, messages=[{"role": "user",
                                                        "content": "Once upon a time"}],
                                       max_tokens=N, temperature=0)
            want = same_as_local(res, ["--prompt", "Once upon a time"])
            assert want["chat_template"] == "chatml", want
            assert res.stop_reason in ("length", "eos"), res.stop_reason
        ck.check("a user message: the worker renders the fallback (chatml), as --local does",
                 user_message)

        def explicit_template():
            res = client.generate_text(NAME, messages=[
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": "Lily and Ben"}], chat_template="llama3",
                max_tokens=N, temperature=0)
            same_as_local(res, ["--system", "Be kind.", "--prompt", "Lily and Ben",
                                "--chat-template", "llama3"])
        ck.check("a system message and an explicit template (llama3)", explicit_template)

        def cli_messages_file():
            r = run([tool("itt"), "generate", "--broker", c.front, "--model", NAME,
                     "--messages", tmp, "--chat-template", "gemma", "--temperature", "0",
                     "-n", str(N), "--json"], timeout=60)
            got = json.loads(r.stdout)
            want = local(["--messages", tmp, "--chat-template", "gemma"])
            assert got["tokens"] == want["tokens"], (got["tokens"], want["tokens"])
            assert got["prompt_tokens"] == want["prompt_tokens"]
            assert got["messages"] == conv, got["messages"]
            # without --json only the reply is printed, not the conversation
            r = run([tool("itt"), "generate", "--broker", c.front, "--model", NAME,
                     "--messages", tmp, "--chat-template", "gemma", "--temperature", "0",
                     "-n", str(N)], timeout=60)
            assert r.stdout.decode().rstrip("\n") == want["text"], (r.stdout, want["text"])
        ck.check("itt generate --broker --chat with a --messages file equals --local",
                 cli_messages_file)

        def broker_refusals():
            user = {"role": "user", "content": "hi"}
            refused(client, "INVALID_ARGUMENT", "messages and prompt are exclusive",
                    prompt="text", messages=[user])
            refused(client, "INVALID_ARGUMENT", "messages[0].role",
                    messages=[{"role": "tool", "content": "x"}])
            refused(client, "INVALID_ARGUMENT", "a system message may only come first",
                    messages=[user, {"role": "system", "content": "x"}])
            refused(client, "INVALID_ARGUMENT", "chat_template is only valid with messages",
                    prompt="text", chat_template="chatml")
            refused(client, "INVALID_ARGUMENT", "messages has 257 entries",
                    messages=[user] * 257)
            refused(client, "INVALID_ARGUMENT", "bytes of content",
                    messages=[{"role": "user", "content": "a" * 200000}] * 2)
        ck.check("the broker refuses bad conversations (INVALID_ARGUMENT, naming the field)",
                 broker_refusals)

        def worker_refusals():
            user = {"role": "user", "content": "hi"}
            refused(client, "UNAVAILABLE", "chat_template", messages=[user],
                    chat_template="jinja")
            refused(client, "UNAVAILABLE", "alternate", messages=[user, user],
                    chat_template="llama2")
        ck.check("an unknown template or refused turns fail with the worker's reason",
                 worker_refusals)

        def cli_usage():
            for args, needle in ((["--system", "x", "-p", "hi"], "need --chat"),
                                 (["--chat"], "needs a prompt or --messages"),
                                 (["--messages", "/nonexistent/x.json"], "--messages")):
                r = run([tool("itt"), "generate", "--broker", c.front, "--model", NAME] + args,
                        check=False, timeout=30)
                err = r.stderr.decode()
                assert r.returncode == 2 and needle in err, (args, r.returncode, err)
        ck.check("itt generate: --system without --chat, no message, a missing file: usage "
                 "errors", cli_usage)

    chatml = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
              "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    eot_model = os.path.join(itt_test.TMP, f"test_chat-{os.getpid()}-eot.gguf")
    odd_model = os.path.join(itt_test.TMP, f"test_chat-{os.getpid()}-odd.gguf")
    EOT = 511
    gguf_with_chat(MODEL, eot_model, chatml, EOT)
    gguf_with_chat(MODEL, odd_model, "{{ messages | join }}", EOT)
    bias = {EOT: 100.0}
    hi = [{"role": "user", "content": "Once upon a time"}]

    def end_of_turn():
        with Cluster(eot_model, workers=1, name=NAME) as c, Client(c.front) as client:
            res = client.generate_text(NAME, messages=hi, max_tokens=8, temperature=0,
                                       logit_bias=bias)
            assert res.stop_reason == "eos" and res.tokens == [], (res.stop_reason, res.tokens)
            # the rendering's own <|im_end|> is one token: special tokens are parsed
            assert res.prompt_tokens.count(EOT) == 1, res.prompt_tokens
            prompt = res.prompt_tokens
            # a plain prompt ends there too: <|im_end|> is an end-of-generation token of
            # the vocabulary (HELLO's eog_tokens), as in llama.cpp
            res = client.generate_text(NAME, "Once upon a time", max_tokens=3, temperature=0,
                                       logit_bias=bias)
            assert res.tokens == [] and res.stop_reason == "eos", (res.tokens, res.stop_reason)
        r = run([tool("itt"), "generate", "--local", eot_model, "--chat", "-p", hi[0]["content"],
                 "--temperature", "0", "-n", "8", "--json"], timeout=60)
        got = json.loads(r.stdout)
        assert got["chat_template"] == "chatml", got
        assert got["prompt_tokens"] == prompt, (got["prompt_tokens"], prompt)
    ck.check("the model's template (chatml) ends the turn at <|im_end|>, which is not sent",
             end_of_turn)

    def unrecognised():
        with Cluster(odd_model, workers=1, name=NAME) as c, Client(c.front) as client:
            refused(client, "UNAVAILABLE", "not one itt recognises", messages=hi)
            res = client.generate_text(NAME, messages=hi, chat_template="chatml",
                                       max_tokens=8, temperature=0, logit_bias=bias)
            assert res.stop_reason == "eos" and res.tokens == [], res
        r = run([tool("itt"), "generate", "--local", odd_model, "--chat", "-p", "hi"],
                check=False, timeout=60)
        assert r.returncode == 2 and b"--chat-template" in r.stderr, r.stderr
        # or unless the worker was told which one to use
        with Cluster(odd_model, workers=1, name=NAME,
                     worker_args=["--chat-template", "chatml"]) as c, \
                Client(c.front) as client:
            res = client.generate_text(NAME, messages=hi, max_tokens=8, temperature=0,
                                       logit_bias=bias)
            assert res.stop_reason == "eos" and res.tokens == [], res
    ck.check("a template we do not recognise is refused unless the request (or the worker's "
             "--chat-template) names one", unrecognised)

    def two_stages():
        with Cluster(MODEL, workers=0, name=NAME) as c, Client(c.front) as client:
            c.add_worker(["--layers", "0:2"], wait=False)
            c.add_worker(["--layers", "2:5"], wait=False)
            c.wait_workers(2)
            res = client.generate_text(NAME, messages=conv, chat_template="mistral-v7",
                                       max_tokens=N, temperature=0)
            same_as_local(res, ["--messages", tmp, "--chat-template", "mistral-v7"])
        # stage 0 reports the end-of-turn id; the last stage samples it
        with Cluster(eot_model, workers=0, name=NAME) as c, Client(c.front) as client:
            c.add_worker(["--layers", "0:2"], wait=False)
            c.add_worker(["--layers", "2:5"], wait=False)
            c.wait_workers(2)
            res = client.generate_text(NAME, messages=hi, max_tokens=8, temperature=0,
                                       logit_bias=bias)
            assert res.stop_reason == "eos" and res.tokens == [], (res.stop_reason, res.tokens)
    ck.check("a route of two stages: stage 0 renders, the reply equals --local, the turn ends "
             "at its end-of-turn token", two_stages)

    for f in (tmp, eot_model, odd_model):
        os.unlink(f)
    ck.finish()


if __name__ == "__main__":
    main()
