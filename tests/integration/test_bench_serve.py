"""`itt bench serve` against a real broker and worker on loopback: a short
closed-loop run with 2 clients prints one JSON object with the documented
fields, no errors, requests that completed, a vocabulary probed to the
model's (512) and the worker's thread count from STATS; --requests N
measures exactly N requests; a --vocab larger than the model's, an unknown
model and bad arguments are refused with the documented exit codes.

The figures themselves are not asserted (benchmarks print, tests do not time).
Needs ITT_MODEL_DIR (stories260K.gguf) and the built itt, itt-broker and
itt-worker in ITT_BIN_DIR; skips (77) without them.
"""
import json
import math
import os
import subprocess
import sys

import itt_test
from itt_test import Checks, SKIP, tool

MODEL = itt_test.require("stories260K.gguf", ("itt", "itt-broker", "itt-worker"))

from cluster import Cluster  # noqa: E402

ITT = tool("itt")
NAME = "stories260K"

FIELDS = {
    "bench": str, "broker": str, "model": str, "machine": dict, "workers": list,
    "n_workers": int, "worker_threads": int, "clients": int, "prompt_tokens": int,
    "gen_tokens": int, "vocab": int, "vocab_probed": bool, "seed": int, "warmup_s": float,
    "window_s": float, "requests_measured": int, "requests_completed": int,
    "requests_early": int, "measured_tokens": int, "window_tokens": int,
    "tokens_per_s": float, "requests_per_s": float, "ttft_ms": dict, "tpot_ms": dict,
    "errors_total": int, "errors": dict, "interrupted": bool,
}


class Guarded(Checks):
    """Checks that count a timeout or a process failure as a failed check."""

    def check(self, name, fn):
        def guarded():
            try:
                return fn()
            except (subprocess.TimeoutExpired, RuntimeError, OSError, ValueError, KeyError) as e:
                raise AssertionError(f"{type(e).__name__}: {e}")
        super().check(name, guarded)


def serve(front, *args, timeout=60):
    return subprocess.run([ITT, "bench", "serve", "--broker", front, *args],
                          capture_output=True, timeout=timeout)


def parse(r):
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, f"exit {r.returncode}: {err[-2000:]}"
    lines = r.stdout.decode().strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got {len(lines)}: {lines[:3]}"
    return json.loads(lines[0])


def check_dist(d, name):
    for k in ("n", "p50", "p90", "p99", "mean"):
        assert k in d, f"{name}.{k} missing: {d}"
    assert d["n"] > 0, f"{name} has no samples"
    assert 0 <= d["p50"] <= d["p90"] <= d["p99"], f"{name} percentiles out of order: {d}"
    assert all(math.isfinite(d[k]) for k in ("p50", "p90", "p99", "mean")), d


def main():
    checks = Guarded()
    with Cluster(MODEL, workers=1, name=NAME, threads=1) as c:

        def duration_run():
            got = parse(serve(c.front, "--model", NAME, "--clients", "2", "--prompt-tokens",
                              "16", "--gen-tokens", "24", "--duration", "2", "--warmup", "0.5",
                              "--seed", "7", "--json"))
            for k, t in FIELDS.items():
                assert k in got, f"field {k} missing from {sorted(got)}"
                want = (int, float) if t is float else t
                assert isinstance(got[k], want) and not (t is int and isinstance(got[k], bool)), \
                    f"{k} = {got[k]!r} is not {t.__name__}"
            assert got["bench"] == "serve" and got["model"] == NAME, got
            assert (got["clients"], got["prompt_tokens"], got["gen_tokens"]) == (2, 16, 24)
            assert got["vocab"] == 512 and got["vocab_probed"] is True, got["vocab"]
            assert got["errors_total"] == 0 and got["errors"] == {}, \
                (got["errors"], got.get("last_error"))
            assert got["requests_completed"] > 0, got
            assert got["requests_completed"] <= got["requests_measured"], got
            assert got["tokens_per_s"] > 0 and got["window_tokens"] > 0, got
            assert abs(got["window_s"] - 2.0) < 0.05, got["window_s"]
            assert got["n_workers"] == 1 and got["worker_threads"] == 1, got["workers"]
            assert [w["id"] for w in got["workers"]] == ["w0"], got["workers"]
            assert got["workers"][0]["threads"] == 1, got["workers"]
            assert got["machine"]["cores"] >= 1 and got["machine"]["cpu"], got["machine"]
            check_dist(got["ttft_ms"], "ttft_ms")
            check_dist(got["tpot_ms"], "tpot_ms")
            # Every measured request asked for 24 tokens; those that ended
            # early (eos) generated fewer.
            full = got["requests_completed"] - got["requests_early"]
            assert got["measured_tokens"] >= 24 * full, got
            assert got["measured_tokens"] <= 24 * got["requests_completed"], got
            print(f"     {got['requests_completed']} requests, {got['tokens_per_s']:.0f} tok/s, "
                  f"TTFT p50 {got['ttft_ms']['p50']:.2f} ms, "
                  f"TPOT p50 {got['tpot_ms']['p50']:.2f} ms")
        checks.check("2 clients for 2 s: JSON fields, no errors", duration_run)

        def requests_run():
            got = parse(serve(c.front, "--model", NAME, "--clients", "2", "--requests", "5",
                              "--warmup", "0", "--gen-tokens", "8", "--vocab", "512",
                              "--temperature", "0", "--json"))
            assert got["requests_measured"] == 5, got["requests_measured"]
            assert got["requests_completed"] == 5 and got["errors_total"] == 0, got
            assert got["vocab_probed"] is False and got["temperature"] == 0, got
            assert got["duration_s"] is None and got["requests"] == 5, got
        checks.check("--requests 5 measures exactly 5 requests", requests_run)

        def table_run():
            r = serve(c.front, "--model", NAME, "--clients", "2", "--duration", "0.5",
                      "--warmup", "0", "--gen-tokens", "8")
            out = r.stdout.decode()
            assert r.returncode == 0, r.stderr.decode(errors="replace")
            for word in ("TTFT", "TPOT", "tok/s aggregate", "errors       none", "cores",
                         "2 clients", "w0"):
                assert word in out, f"{word!r} not in the table:\n{out}"
        checks.check("the table names the load, workers, machine and figures", table_run)

        def vocab_too_large():
            r = serve(c.front, "--model", NAME, "--vocab", "513", "--duration", "1")
            assert r.returncode == 2, (r.returncode, r.stderr)
            assert b"--vocab 513" in r.stderr, r.stderr
        checks.check("a --vocab beyond the model's is refused (exit 2)", vocab_too_large)

        def unknown_model():
            r = serve(c.front, "--model", "no-such-model", "--duration", "1")
            assert r.returncode == 1, (r.returncode, r.stderr)
            assert b"MODEL_NOT_FOUND" in r.stderr, r.stderr
        checks.check("an unknown model fails with exit 1", unknown_model)

        def bad_arguments():
            cases = [
                [],                                            # no --broker/--model
                ["--model", NAME, "--clients", "0"],
                ["--model", NAME, "--clients", "x"],
                ["--model", NAME, "--prompt-tokens", "0"],
                ["--model", NAME, "--gen-tokens", "-1"],
                ["--model", NAME, "--duration", "0"],
                ["--model", NAME, "--duration", "1", "--requests", "3"],
                ["--model", NAME, "--warmup", "-1"],
                ["--model", NAME, "--vocab", "2"],
                ["--model", NAME, "--temperature", "nan"],
                ["--model", NAME, "--no-such-flag", "1"],
                ["--model", NAME, "--clients"],                # missing value
            ]
            for extra in cases:
                args = [ITT, "bench", "serve"] + (["--broker", c.front] if extra else []) + extra
                r = subprocess.run(args, capture_output=True, timeout=30)
                assert r.returncode == 2, f"{extra}: exit {r.returncode}"
                assert r.stderr.startswith(b"itt bench serve:"), (extra, r.stderr[:200])
                assert r.stdout == b"", (extra, r.stdout[:200])
            r = subprocess.run([ITT, "bench", "serve", "--help"], capture_output=True, timeout=30)
            assert r.returncode == 0 and b"usage: itt bench serve" in r.stdout, r
        checks.check("bad arguments are refused with exit 2", bad_arguments)

    checks.finish()


if __name__ == "__main__":
    main()
