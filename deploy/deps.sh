#!/usr/bin/env bash
# Installs the Debian packages itt needs to build, run and test, if missing.
# Sourced by quickstart.sh and test.sh; safe to run again.
set -euo pipefail

ITT_PACKAGES=(
    build-essential cmake pkg-config clang
    libzmq3-dev libuv1-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
    libopenblas-dev libcmocka-dev libjansson-dev libutf8proc-dev
    python3 python3-numpy python3-zmq python3-protobuf python3-sentencepiece python3-jinja2
    iproute2 curl ca-certificates
)

itt_install_deps() {
    local missing=()
    for p in "${ITT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "itt: installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Where the shared test models live: ITT_MODEL_DIR, else ../shared/models
# next to the checkout.
itt_model_dir() {
    if [ -n "${ITT_MODEL_DIR:-}" ]; then
        echo "$ITT_MODEL_DIR"
    elif [ -d "$ITT_ROOT/../shared/models" ]; then
        (cd "$ITT_ROOT/../shared/models" && pwd)
    fi
}
