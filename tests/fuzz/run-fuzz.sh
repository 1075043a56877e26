#!/usr/bin/env bash
# run-fuzz.sh BUILD_DIR SECONDS: runs every libFuzzer target built in
# BUILD_DIR/bin (fuzz-*, from cmake -DITT_FUZZ=ON -DCMAKE_C_COMPILER=clang)
# for SECONDS each and prints executions per second and coverage.
#
# Each target fuzzes a fresh temporary corpus, seeded from
# tests/fuzz/corpus-X/ for a target named fuzz-X when that folder exists;
# fuzz-gguf also gets stories260K.gguf from $ITT_MODEL_DIR (when set and
# present) and a few tiny GGUF files generated here; fuzz-tokenizer loads
# that model's tokenizer itself, besides the vocabularies it builds in
# memory.  Crash, leak and timeout inputs are kept in
# BUILD_DIR/fuzz-artifacts/ to reproduce with `BUILD_DIR/bin/fuzz-X
# ARTIFACT`.  Extra libFuzzer flags: $FUZZ_ARGS.
#
# Coverage needs the code under test instrumented too: when the engine
# library is built without -fsanitize=fuzzer-no-link, "cov" stays at the
# few edges of the target file and the fuzzer runs blind.
#
# Exit status: 0 when every target ran clean, 1 when any found a problem,
# 2 on a usage error or when no target is built.
set -u

usage() {
	echo "usage: $0 BUILD_DIR SECONDS" >&2
	exit 2
}
[ $# -eq 2 ] || usage
build=$1
secs=$2
case $secs in '' | *[!0-9]*) usage ;; esac
here=$(cd "$(dirname "$0")" && pwd)

targets=()
for bin in "$build"/bin/fuzz-*; do
	[ -f "$bin" ] && [ -x "$bin" ] && targets+=("$bin")
done
if [ ${#targets[@]} -eq 0 ]; then
	echo "run-fuzz: no fuzz-* targets in $build/bin" \
		"(configure with -DITT_FUZZ=ON -DCMAKE_C_COMPILER=clang)" >&2
	exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/itt-fuzz.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT
artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts" || exit 2

# Little-endian integers and GGUF strings as printf escapes.
le32() {
	local v=$1
	printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((v & 255)) $((v >> 8 & 255)) \
		$((v >> 16 & 255)) $((v >> 24 & 255))
}
le64() {
	le32 $(($1 & 0xffffffff))
	le32 $(($1 >> 32 & 0xffffffff))
}
gstr() {
	le64 ${#1}
	printf '%s' "$1"
}
hdr() { # version n_tensors n_kv
	printf '%s%s%s%s' "$(le32 0x46554747)" "$(le32 "$1")" "$(le64 "$2")" "$(le64 "$3")"
}
pad_to() { # file alignment
	local n
	n=$(wc -c <"$1")
	head -c $((($2 - n % $2) % $2)) /dev/zero >>"$1"
}
zeros() { head -c "$2" /dev/zero >>"$1"; }
emit() { printf '%b' "$1"; } # expands the \xHH escapes built above

# Tiny valid GGUF files that reach the kv, array and tensor paths quickly.
seed_gguf() {
	local dir=$1 f
	if [ -n "${ITT_MODEL_DIR:-}" ] && [ -r "$ITT_MODEL_DIR/stories260K.gguf" ]; then
		cp "$ITT_MODEL_DIR/stories260K.gguf" "$dir/stories260K.gguf"
	else
		echo "run-fuzz: ITT_MODEL_DIR/stories260K.gguf not found; tiny seeds only" >&2
	fi

	f=$dir/empty-v3.gguf
	emit "$(hdr 3 0 0)" >"$f"
	pad_to "$f" 32

	# v2: alignment, a string, a string array, a bool and one F32 [4, 2]
	f=$dir/kv-v2.gguf
	{
		emit "$(hdr 2 1 4)$(gstr general.alignment)$(le32 4)$(le32 32)"
		emit "$(gstr general.name)$(le32 8)$(gstr tiny)"
		emit "$(gstr tokenizer.ggml.tokens)$(le32 9)$(le32 8)$(le64 2)$(gstr a)$(gstr bc)"
		emit "$(gstr flag)$(le32 7)\\x01"
		emit "$(gstr t)$(le32 2)$(le64 4)$(le64 2)$(le32 0)$(le64 0)"
	} >"$f"
	pad_to "$f" 32
	zeros "$f" 32

	# v3: a float64 and i32 array, a Q8_0 [32] and a Q4_K [256, 1, 1, 1]
	f=$dir/quant-v3.gguf
	{
		emit "$(hdr 3 2 2)$(gstr x)$(le32 12)$(le64 0x3fe0000000000000)"
		emit "$(gstr ids)$(le32 9)$(le32 5)$(le64 3)$(le32 1)$(le32 2)$(le32 3)"
		emit "$(gstr a)$(le32 1)$(le64 32)$(le32 8)$(le64 0)"
		emit "$(gstr b)$(le32 4)$(le64 256)$(le64 1)$(le64 1)$(le64 1)$(le32 12)$(le64 64)"
	} >"$f"
	pad_to "$f" 32
	zeros "$f" $((64 + 144))
}

status=0
printf '%-24s %10s %12s %8s %8s  %s\n' target runs exec/s cov ft result
for bin in "${targets[@]}"; do
	name=$(basename "$bin")
	corpus="$work/$name"
	log="$work/$name.log"
	mkdir -p "$corpus"
	if [ -d "$here/corpus-${name#fuzz-}" ]; then
		cp -r "$here/corpus-${name#fuzz-}/." "$corpus/"
	fi
	[ "$name" = fuzz-gguf ] && seed_gguf "$corpus"

	# shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
	"$bin" -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
		-artifact_prefix="$artifacts/$name-" ${FUZZ_ARGS:-} "$corpus" >"$log" 2>&1
	rc=$?

	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
	eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
	ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
	if [ $rc -eq 0 ]; then
		result=ok
	else
		result="FAILED (exit $rc)"
		status=1
	fi
	printf '%-24s %10s %12s %8s %8s  %s\n' "$name" "${runs:-?}" "${eps:-?}" "${cov:-?}" \
		"${ft:-?}" "$result"
	if [ $rc -ne 0 ]; then
		echo "---- $name log (tail) ----"
		tail -n 60 "$log"
		echo "---- artifacts in $artifacts ----"
	fi
done
exit $status
