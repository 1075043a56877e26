"""test_dequant_peer: our dequantisation against llama.cpp's, bit for bit.

With the peer (peer.py: a llama.cpp build under $ITT_PEER_DIR, default
${TMPDIR:-/tmp}/itt-peer, with llama.cpp/build/bin/llama-quantize and
llama.cpp/gguf-py):

1. A small synthetic llama (itt-synth: dim 256, 2 layers, ffn 544 so that
   llama-quantize gives ffn_down, whose rows are not whole 256-blocks, a
   legacy type: files mix types) goes through llama-quantize for every file
   type below.  Every tensor of every file is dequantised by
   tests/tools/itt-dequant and by gguf-py's gguf.quants.dequantize (the
   peer's own NumPy reading of the formats), and the float32 arrays must be
   equal bit for bit (NaN-aware).  itt-dequant --check-matmul also checks,
   on the same tensors, that the fused kernel equals the F32 kernel on the
   dequantised rows.  Every one of the 13 loadable types must have been
   compared at least once, and `itt generate --local` must load and run
   each file.
2. The 768x12 synthetic model's llama-quantize outputs already under
   $ITT_PEER_DIR/models (synth-llama-768x12-<type>.gguf, when present): a
   few tensors of each, first rows only.

Without the peer, numpy or the built tools it prints "SKIP: <why>" and
exits 77.  Runtime: about 25 s on two busy cores.
"""
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import itt_test  # noqa: E402
import peer  # noqa: E402

# llama-quantize file types (the type name is its last positional argument)
FTYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_m", "q4_k_m", "q5_k_m",
          "q6_k", "bf16", "f16"]
LOADABLE = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
            "Q4_K", "Q5_K", "Q6_K"}
SYNTH = ["--dim", "256", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "544",
         "--vocab", "512", "--ctx", "128", "--seed", "7"]
# the big model: a few tensors, first rows
BIG_TENSORS = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_v.weight",
               "blk.0.ffn_down.weight", "blk.11.ffn_gate.weight", "output.weight"]
BIG_ROWS = 96


def main():
    peer.require_peer(("llama-quantize",))
    peer.require_itt(("itt-dequant", "itt-synth", "itt"))
    sys.path.insert(0, os.path.join(peer.peer_dir(), "llama.cpp", "gguf-py"))
    try:
        import numpy as np
        import gguf
        import gguf.quants
    except ImportError as e:
        peer.skip("gguf-py or numpy cannot be imported: %s" % e)

    tmp = os.path.join(itt_test.TMP, "dequant-peer-%d" % os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    checks = itt_test.Checks()
    seen = {}  # ggml type name -> tensors compared

    def compare(path, names=None, rows=None):
        """Our rows against gguf-py's for the named tensors (all if None)."""
        tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
        names = names or sorted(tensors)
        out = os.path.join(tmp, "out")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        args = [itt_test.tool("itt-dequant"), path, "--out-dir", out, "--check-matmul"]
        if rows:
            args += ["--rows", str(rows)]
        itt_test.run(args + names, timeout=120)
        for name in names:
            t = tensors[name]
            data = np.asarray(t.data)
            if rows:
                data = data[:rows] if data.ndim > 1 else data
            if t.tensor_type == gguf.GGMLQuantizationType.F32:
                want = data.astype(np.float32)
            else:
                want = gguf.quants.dequantize(data, t.tensor_type)
            want = np.ascontiguousarray(want, dtype=np.float32).reshape(-1)
            got = np.fromfile(os.path.join(out, name + ".f32"), dtype="<f4")
            tname = t.tensor_type.name
            if got.shape != want.shape:
                raise AssertionError("%s (%s): %d values, gguf-py has %d" % (
                    name, tname, got.size, want.size))
            # bit for bit, except that any NaN equals any NaN
            same = (got.view(np.uint32) == want.view(np.uint32)) | (
                np.isnan(got) & np.isnan(want))
            if not same.all():
                i = int(np.argmin(same))
                raise AssertionError(
                    "%s (%s): %d of %d values differ; first at %d: %r, gguf-py %r" % (
                        name, tname, int((~same).sum()), same.size, i, float(got[i]),
                        float(want[i])))
            seen[tname] = seen.get(tname, 0) + 1
        return len(names)

    # 1. every file type of a small model, every tensor
    f32 = os.path.join(tmp, "synth-f32.gguf")
    itt_test.run([itt_test.tool("itt-synth"), f32] + SYNTH, timeout=120)
    quantize = peer.peer_bin("llama-quantize")
    for ft in FTYPES:
        path = os.path.join(tmp, "synth-%s.gguf" % ft)

        def small(ft=ft, path=path):
            r = subprocess.run([quantize, f32, path, ft, "1"], capture_output=True,
                               timeout=120)
            if r.returncode != 0:
                raise AssertionError("llama-quantize %s exited %d: %s" % (
                    ft, r.returncode, r.stderr.decode(errors="replace")[-1000:]))
            n = compare(path)
            types = sorted({t.tensor_type.name for t in gguf.GGUFReader(path).tensors})
            # and the engine loads the mix and runs it
            itt_test.run([itt_test.tool("itt"), "generate", "--local", path, "-p", "a b",
                          "-n", "4", "--temperature", "0", "--json"], timeout=120)
            print("     %-7s %3d tensors equal (%s); itt generate ran" % (
                ft, n, " ".join(types)))
        checks.check("llama-quantize %s: every tensor bit-exact" % ft, small)

    def coverage():
        missing = sorted(LOADABLE - set(seen))
        if missing:
            raise AssertionError("types never compared: %s" % " ".join(missing))
        print("     " + " ".join("%s:%d" % kv for kv in sorted(seen.items())))
    checks.check("all 13 loadable types compared", coverage)

    # 2. the 768x12 model's llama-quantize files that are already there
    models = os.path.join(peer.peer_dir(), "models")
    big = sorted(f for f in (os.listdir(models) if os.path.isdir(models) else [])
                 if f.startswith("synth-llama-768x12-") and f.endswith(".gguf")
                 and not f.endswith("-f32.gguf"))
    for f in big:
        def big_file(f=f):
            n = compare(os.path.join(models, f), BIG_TENSORS, BIG_ROWS)
            print("     %s: %d tensors, first %d rows, equal" % (f, n, BIG_ROWS))
        checks.check("%s: bit-exact" % f, big_file)
    if not big:
        print("note: no synth-llama-768x12-*.gguf under %s; small model only" % models)

    shutil.rmtree(tmp, ignore_errors=True)
    checks.finish()


if __name__ == "__main__":
    main()
