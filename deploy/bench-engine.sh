#!/usr/bin/env bash
# Engine benchmark of the README's performance section: makes the 134M
# synthetic model (dim 768, 12 layers, ffn 2048, vocab 32000) in F32 and
# Q8_0 in a temporary folder, then runs `itt bench engine` for 1 and 2
# threads with 128- and 512-token prompts.  Prints each run's table and
# writes the JSON lines to bench-engine.jsonl (or $1).
# Usage: deploy/bench-engine.sh [OUT.jsonl] (after a build into build/).
set -euo pipefail
ITT_ROOT=$(cd "$(dirname "$0")/.." && pwd)
bin="$ITT_ROOT/build/bin"
out=${1:-bench-engine.jsonl}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$bin/itt-synth" "$tmp/synth-f32.gguf" >/dev/null
"$bin/itt-quantize" "$tmp/synth-f32.gguf" "$tmp/synth-q8_0.gguf" q8_0 >/dev/null
: >"$out"
for type in f32 q8_0; do
    for threads in 1 2; do
        for prompt in 128 512; do
            "$bin/itt" bench engine --local "$tmp/synth-$type.gguf" --threads "$threads" \
                --prompt-tokens "$prompt" --gen-tokens 64 --reps "${ITT_REPS:-5}" --json >>"$out"
        done
    done
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
m = rows[0]["machine"]
print(f"machine: {m['cpu']}, {m['cores']} cores; model: 134M synthetic (dim 768, 12 layers, "
      f"ffn 2048, vocab 32000); decode = batch 1 after the prompt")
print(f"{'type':5} {'thr':>3} {'prompt':>6} | {'prefill tok/s':>13} {'GFLOP/s':>8} "
      f"{'sgemm peak':>10} {'frac':>6} | {'decode tok/s':>12} {'GB/s read':>9} "
      f"{'roofline':>8} {'frac':>6}")
for r in rows:
    print(f"{r['type']:5} {r['threads']:>3} {r['prompt_tokens']:>6} | "
          f"{r['prefill_tok_s']:>13.1f} {r['prefill_gflops']:>8.1f} {r['sgemm_gflops']:>10.1f} "
          f"{100*r['prefill_fraction']:>5.1f}% | {r['decode_tok_s']:>12.1f} "
          f"{r['bandwidth_gb_s']:>9.2f} {r['decode_roofline_tok_s']:>8.1f} "
          f"{100*r['decode_fraction']:>5.1f}%")
PY
echo "JSON lines in $out"
