#!/usr/bin/env bash
# Sets up and runs the main job: installs what is missing, builds, and
# generates a story with stories260K.  The model comes from ITT_MODEL_DIR or
# ../shared/models, or is downloaded from its public home when online.
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
./build/bin/itt generate --local "$model" --prompt "${ITT_PROMPT:-Once upon a time}" \
    -n "${ITT_TOKENS:-200}" --temperature "${ITT_TEMPERATURE:-0.8}" --seed "${ITT_SEED:-42}"
