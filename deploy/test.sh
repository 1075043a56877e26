#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds with warnings as
# errors, runs every ctest test, the unit tests again under ASan+UBSan, and
# each fuzz target briefly.  Usage: deploy/test.sh [--quick] (skips the
# sanitizer and fuzz builds).
set -euo pipefail
ITT_ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ITT_ROOT/deploy/deps.sh"
itt_install_deps

quick=0
[ "${1:-}" = "--quick" ] && quick=1
jobs=$(nproc)

ITT_MODEL_DIR=$(itt_model_dir)
export ITT_MODEL_DIR
if [ -z "$ITT_MODEL_DIR" ]; then
    echo "itt: no model folder (ITT_MODEL_DIR unset, ../shared/models absent): model tests will skip"
fi
export ITT_DATA_DIR=${ITT_DATA_DIR:-$( [ -d "$ITT_ROOT/../shared/data" ] && cd "$ITT_ROOT/../shared/data" && pwd )}

cd "$ITT_ROOT"
cmake -S . -B build -DITT_WERROR=ON >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")

if [ $quick -eq 0 ]; then
    echo "== unit tests under AddressSanitizer + UndefinedBehaviorSanitizer"
    cmake -S . -B build-asan -DITT_WERROR=ON -DITT_SANITIZE=ON >/dev/null
    cmake --build build-asan -j"$jobs"
    (cd build-asan && ctest --output-on-failure -j"$jobs" -L unit)

    echo "== fuzz targets (libFuzzer, ${ITT_FUZZ_SECONDS:-30} s each)"
    CC=clang cmake -S . -B build-fuzz -DITT_FUZZ=ON -DITT_WERROR=ON >/dev/null
    cmake --build build-fuzz -j"$jobs"
    bash tests/fuzz/run-fuzz.sh build-fuzz "${ITT_FUZZ_SECONDS:-30}"
fi
