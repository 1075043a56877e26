"""The Python client (client/python/itt_client.py) against a real broker and
real workers: a greedy story streams chunk by chunk (seq 0, 1, 2, ...) and
equals `itt generate --local`; several streams on one client are kept apart;
the broker's INVALID_ARGUMENT for top_p 2 and MODEL_NOT_FOUND arrive as
IttError; cancel ends a stream with CANCELLED; stats() lists the workers;
example.py streams a story.

Needs ITT_MODEL_DIR (stories260K.gguf) and the built binaries; skips (77)
without them.
"""
import json
import os
import subprocess
import sys

import itt_test
from itt_test import Checks, SKIP, run, tool

MODEL = itt_test.require("stories260K.gguf", ("itt", "itt-broker", "itt-worker"))

from cluster import Cluster  # noqa: E402
from itt_client import Client, IttError  # noqa: E402  (cluster.py put it on the path)

NAME = "stories260K"
PY_DIR = os.path.join(itt_test.SOURCE, "client", "python")


def local(prompt, n):
    r = run([tool("itt"), "generate", "--local", MODEL, "--temperature", "0", "-n", str(n),
             "--prompt", prompt, "--json"], timeout=60)
    return json.loads(r.stdout)


class Guarded(Checks):
    """Checks that count a timeout or a process failure as a failed check."""

    def check(self, name, fn):
        def guarded():
            try:
                return fn()
            except (subprocess.TimeoutExpired, RuntimeError, OSError, ValueError, StopIteration, IttError) as e:
                raise AssertionError(f"{type(e).__name__}: {e}")
        super().check(name, guarded)


def main():
    checks = Guarded()
    with Cluster(MODEL, workers=2, name=NAME) as c, Client(c.front) as client:

        def greedy_story():
            ref = local("Once upon a time", 200)
            seqs, texts, result = [], [], None
            for item in client.generate(NAME, "Once upon a time", max_tokens=200,
                                        temperature=0):
                if item.final:
                    result = item
                else:
                    seqs.append(item.seq)
                    texts.append(item.data)
            assert result is not None, "no final result"
            assert seqs == list(range(len(seqs))) and len(seqs) == result.n_chunks, seqs[:5]
            assert len(seqs) > 1, "the story did not stream in chunks"
            assert b"".join(texts).decode() == ref["text"], "streamed text differs from --local"
            assert result.text == ref["text"]
            assert result.tokens == ref["tokens"]
            assert result.prompt_tokens == ref["prompt_tokens"]
            assert result.stop_reason == ref["stop_reason"] == "length"
            assert result.timings["total_ms"] >= result.timings["first_token_ms"] >= 0
        checks.check("greedy story streams in order and equals --local", greedy_story)

        def interleaved():
            prompts = ["The cat", "A little bird", "Tom had a red ball"]
            streams = [client.generate(NAME, p, max_tokens=48, temperature=0) for p in prompts]
            # read them round-robin, one item at a time
            results = [None] * len(streams)
            while any(r is None for r in results):
                for i, s in enumerate(streams):
                    if results[i] is None:
                        item = next(s)
                        if item.final:
                            results[i] = item
            for p, r in zip(prompts, results):
                assert r.text == local(p, 48)["text"], f"{p!r}: {r.text!r}"
        checks.check("three streams on one client, read round-robin, stay apart", interleaved)

        def seeded():
            a = client.generate_text(NAME, "Mom said", max_tokens=40, temperature=0.8, seed=42)
            b = client.generate_text(NAME, "Mom said", max_tokens=40, temperature=0.8, seed=42)
            assert a.seed == b.seed == 42 and a.tokens == b.tokens
        checks.check("same seed, same sampled stream", seeded)

        def invalid_top_p():
            try:
                client.generate_text(NAME, "x", top_p=2)
            except IttError as e:
                assert e.name == "INVALID_ARGUMENT", e.name
                assert "top_p" in e.reason, e.reason
                return
            raise AssertionError("no error for top_p 2")
        checks.check("top_p 2 is INVALID_ARGUMENT from the broker", invalid_top_p)

        def unknown_model():
            try:
                client.generate_text("no-such-model", "x", max_tokens=4)
            except IttError as e:
                assert e.name == "MODEL_NOT_FOUND", e.name
                return
            raise AssertionError("no error for an unknown model")
        checks.check("unknown model is MODEL_NOT_FOUND", unknown_model)

        def cancel():
            s = client.generate(NAME, "Once upon a time", max_tokens=2000, temperature=0)
            first = next(s)
            assert not first.final
            s.cancel()
            try:
                for _ in s:
                    pass
            except IttError as e:
                assert e.name == "CANCELLED", e.name
                return
            raise AssertionError("the cancelled stream ended without CANCELLED")
        checks.check("cancel ends the stream with CANCELLED", cancel)

        def stats():
            st = client.stats()
            assert sorted(w.id for w in st.workers) == ["w0", "w1"], st.workers
            assert all(w.model == NAME for w in st.workers)
            assert st.requests >= 5, st.requests
        checks.check("stats() lists the workers", stats)

        def example():
            env = dict(os.environ)
            r = subprocess.run([sys.executable, os.path.join(PY_DIR, "example.py"), "--broker",
                                c.front, "--model", NAME, "-n", "60", "--temperature", "0"],
                               capture_output=True, timeout=60, env=env)
            assert r.returncode == 0, r.stderr.decode(errors="replace")
            ref = local("Once upon a time", 60)
            assert r.stdout.decode() == "Once upon a time" + ref["text"] + "\n", r.stdout
        checks.check("example.py streams a story", example)
    checks.finish()


if __name__ == "__main__":
    main()
