#!/usr/bin/env bash
# Serving benchmark of one worker on this machine: writes the 134M synthetic
# model (itt-synth: dim 768, 12 layers, ffn 2048, vocab 32000) as F32 and as
# Q8_0 into a temporary folder, starts one itt-broker and, for each model in
# turn, ONE itt-worker with 2 threads, and runs `itt bench serve` (closed loop,
# 32-token prompts, 64 generated tokens) at 1, 4, 16 and 64 clients.  Prints a
# summary table (aggregate tok/s, its ratio to 1 client, TTFT and TPOT p50/p99)
# and writes one JSON line per run to OUT (default bench-serve.jsonl).
#
# Builds nothing: BUILD_DIR must hold bin/itt, bin/itt-broker, bin/itt-worker,
# bin/itt-synth and bin/itt-quantize.  Every process it starts is stopped, and
# the temporary folder removed, when it exits (also on Ctrl-C).
#
# usage: deploy/bench-serve.sh BUILD_DIR [OUT.jsonl]
# Environment (defaults): ITT_BENCH_CLIENTS ("1 4 16 64"), ITT_BENCH_DURATION (20 s
# measured per run), ITT_BENCH_WARMUP (5 s), ITT_BENCH_THREADS (2),
# ITT_BENCH_PROMPT (32), ITT_BENCH_GEN (64), ITT_BENCH_KV_MB (1024: 64 sessions of
# 96 tokens need about 450 MiB of F32 KV cache).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    usage
    exit 0
fi
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    usage >&2
    exit 2
fi
[ -d "$1/bin" ] || { echo "bench-serve: $1/bin: no such folder (give a build dir)" >&2; exit 2; }
bin=$(cd "$1" && pwd)/bin
out=${2:-bench-serve.jsonl}
clients=${ITT_BENCH_CLIENTS:-1 4 16 64}
duration=${ITT_BENCH_DURATION:-20}
warmup=${ITT_BENCH_WARMUP:-5}
threads=${ITT_BENCH_THREADS:-2}
n_prompt=${ITT_BENCH_PROMPT:-32}
n_gen=${ITT_BENCH_GEN:-64}
kv_mb=${ITT_BENCH_KV_MB:-1024}
for b in itt itt-broker itt-worker itt-synth itt-quantize; do
    [ -x "$bin/$b" ] || { echo "bench-serve: $bin/$b is not built" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "bench-serve: python3 is needed" >&2; exit 2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/itt-bench-serve.XXXXXX")
broker_pid=
worker_pid=
stop_pid() { # SIGTERM, SIGKILL after 5 s; reaps it
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$worker_pid"
    stop_pid "$broker_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

echo "bench-serve: writing the synthetic models into $tmp" >&2
"$bin/itt-synth" "$tmp/synth-f32.gguf" >"$tmp/synth.log" 2>&1 ||
    { cat "$tmp/synth.log" >&2; exit 1; }
"$bin/itt-quantize" "$tmp/synth-f32.gguf" "$tmp/synth-q8_0.gguf" q8_0 >"$tmp/quantize.log" 2>&1 ||
    { cat "$tmp/quantize.log" >&2; exit 1; }

for attempt in 1 2 3; do
    front="tcp://127.0.0.1:$(free_port)"
    back="tcp://127.0.0.1:$(free_port)"
    "$bin/itt-broker" --front "$front" --back "$back" >"$tmp/broker.log" 2>&1 &
    broker_pid=$!
    sleep 0.3
    kill -0 "$broker_pid" 2>/dev/null && break
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=
done
[ -n "$broker_pid" ] || { echo "bench-serve: itt-broker does not start:" >&2; cat "$tmp/broker.log" >&2; exit 1; }

: >"$out"
failed=0
for type in f32 q8_0; do
    name="synth-$type"
    "$bin/itt-worker" --broker "$back" --model "$tmp/$name.gguf" --name "$name" \
        --id "bench-$type" --threads "$threads" --max-sessions 64 --kv-mb "$kv_mb" \
        >"$tmp/worker-$type.log" 2>&1 &
    worker_pid=$!
    ready=
    for _ in $(seq 1 600); do
        kill -0 "$worker_pid" 2>/dev/null || break
        if "$bin/itt" stats --broker "$front" --json --timeout-ms 1000 2>/dev/null |
            grep -q "\"model\":\"$name\""; then
            ready=1
            break
        fi
        sleep 0.1
    done
    if [ -z "$ready" ]; then
        echo "bench-serve: worker for $name did not register:" >&2
        tail -20 "$tmp/worker-$type.log" >&2
        exit 1
    fi
    for c in $clients; do
        echo "bench-serve: $name, $c client(s), ${warmup} s warmup + ${duration} s" >&2
        if "$bin/itt" bench serve --broker "$front" --model "$name" --clients "$c" \
            --prompt-tokens "$n_prompt" --gen-tokens "$n_gen" --duration "$duration" \
            --warmup "$warmup" --vocab 32000 --json >"$tmp/run.json" 2>"$tmp/run.err"; then
            cat "$tmp/run.json" >>"$out"
        else
            echo "bench-serve: $name at $c clients failed:" >&2
            cat "$tmp/run.err" >&2
            failed=1
        fi
    done
    stop_pid "$worker_pid"
    worker_pid=
done

python3 - "$out" <<'EOF'
import json, sys

runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
if not runs:
    sys.exit("bench-serve: no results")
r0 = runs[0]
w = r0["workers"][0] if r0["workers"] else {}
print(f"\nmachine  {r0['machine']['cpu']}, {r0['machine']['cores']} cores; one worker, "
      f"{w.get('threads', '?')} threads; prompts {r0['prompt_tokens']} tokens, "
      f"{r0['gen_tokens']} generated; {r0['window_s']:.0f} s measured after "
      f"{r0['warmup_s']:.0f} s warmup\n")
hdr = ("model", "clients", "tok/s", "x 1 client", "req/s", "TTFT p50", "TTFT p99",
       "TPOT p50", "TPOT p99", "early", "errors")
print("%-12s %7s %9s %10s %7s %9s %9s %9s %9s %6s %6s" % hdr)
base = {}
fmt = lambda x: "-" if x is None else f"{x:.1f}"
for r in runs:
    tps = r["tokens_per_s"] or 0.0
    if r["clients"] == 1:
        base[r["model"]] = tps
    b = base.get(r["model"])
    ratio = f"{tps / b:.2f}" if b else "-"
    print("%-12s %7d %9.1f %10s %7.2f %9s %9s %9s %9s %6d %6d" % (
        r["model"], r["clients"], tps, ratio, r["requests_per_s"] or 0.0,
        fmt(r["ttft_ms"]["p50"]), fmt(r["ttft_ms"]["p99"]), fmt(r["tpot_ms"]["p50"]),
        fmt(r["tpot_ms"]["p99"]), r["requests_early"], r["errors_total"]))
print("\n(TTFT and TPOT in ms; tok/s is generated tokens over the measured window)")
EOF
echo "bench-serve: JSON lines in $out" >&2
exit "$failed"
