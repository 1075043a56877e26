#!/usr/bin/env bash
# Sets up and runs the main job: installs what is missing, builds, starts a
# local cluster (a broker and two workers serving stories260K), streams a
# story through the broker, shows the workers' stats, and stops the cluster.
# The model comes from ITT_MODEL_DIR or ../shared/models, or is downloaded
# from its public home when online.  Ports: ITT_FRONT_PORT (5555) and
# ITT_BACK_PORT (5556).
set -euo pipefail
ITT_ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ITT_ROOT/deploy/deps.sh"
itt_install_deps

cd "$ITT_ROOT"
cmake -S . -B build >/dev/null
cmake --build build -j"$(nproc)"

dir=$(itt_model_dir)
model="${dir:+$dir/}stories260K.gguf"
if [ ! -f "$model" ]; then
    mkdir -p models
    model=models/stories260K.gguf
    if [ ! -f "$model" ]; then
        echo "itt: fetching stories260K.gguf"
        curl -fsSL -o "$model.tmp" \
            https://huggingface.co/ggml-org/models/resolve/main/tinyllamas/stories260K.gguf &&
            mv "$model.tmp" "$model"
    fi
fi

front="tcp://127.0.0.1:${ITT_FRONT_PORT:-5555}"
back="tcp://127.0.0.1:${ITT_BACK_PORT:-5556}"
log=$(mktemp)
./build/bin/itt up --model "$model" --workers 2 --front "$front" --back "$back" >"$log" 2>&1 &
up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 600); do
    grep -q "ready" "$log" && break
    kill -0 $up 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
done
grep "itt up" "$log" || true
echo
./build/bin/itt generate --broker "$front" --model stories260K \
    --prompt "${ITT_PROMPT:-Once upon a time}" -n "${ITT_TOKENS:-200}" \
    --temperature "${ITT_TEMPERATURE:-0.8}" --seed "${ITT_SEED:-42}"
echo
./build/bin/itt stats --broker "$front"
