"""itt-quantize against llama.cpp's llama-quantize, read back by llama.cpp.

With the peer (a llama.cpp build under $ITT_PEER_DIR, default
${TMPDIR:-/tmp}/itt-peer: llama.cpp/build/bin/{llama-quantize,llama-simple},
llama.cpp/gguf-py, models/synth-llama-768x12-f32.gguf):

1. A small synthetic llama (itt-synth: 16 layers, dim 256, 4 query heads per
   kv head, ffn 544 so that ffn_down rows need the fallback for 256-blocks)
   goes through every named file type with both tools.  Every tensor must
   get the type llama-quantize gives it, and for each ggml type the RMS
   error (dequantised by gguf-py's own gguf.quants, on a few tensors of each
   file) must be within 1.1x of llama-quantize's.  The table printed also
   counts tensors whose bytes are identical to llama-quantize's.  The same
   for Q4_K_M made from F16 and BF16 copies of that model.
2. The 768x12 synthetic model in Q4_K_M: the tensor types of
   models/synth-llama-768x12-q4_k_m.gguf (made by llama-quantize), when it is
   there, and llama-simple loads our file and generates.

Without the peer (or numpy, or the built tools) it prints "SKIP: <why>" and
exits 77.  Runtime: about 30 s on two cores.
"""
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import itt_test  # noqa: E402

SKIP = 77

# (our name, llama-quantize's name): every file type itt-quantize writes
FTYPES = ["F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M",
          "Q4_K_S", "Q4_1", "Q4_0", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K"]
# tensors whose error is measured in each small file (all types occur)
RMS_TENSORS = ["blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.1.attn_v.weight",
               "blk.0.ffn_down.weight", "blk.1.ffn_down.weight", "blk.2.attn_output.weight",
               "output.weight"]


def skip(why):
    print("SKIP: %s" % why, flush=True)
    sys.exit(SKIP)


def peer_dir():
    return os.environ.get("ITT_PEER_DIR") or os.path.join(
        os.environ.get("TMPDIR") or "/tmp", "itt-peer")


def main():
    peer = peer_dir()
    pbin = os.path.join(peer, "llama.cpp", "build", "bin")
    for b in ("llama-quantize", "llama-simple"):
        if not os.access(os.path.join(pbin, b), os.X_OK):
            skip("llama.cpp peer %s not found (set ITT_PEER_DIR; looked in %s)" % (b, peer))
    for b in ("itt-quantize", "itt-synth"):
        if not os.access(itt_test.tool(b), os.X_OK):
            skip("%s is not built" % itt_test.tool(b))
    sys.path.insert(0, os.path.join(peer, "llama.cpp", "gguf-py"))
    try:
        import numpy as np
        import gguf
        import gguf.quants
    except ImportError as e:
        skip("gguf-py or numpy cannot be imported: %s" % e)

    tmp = os.path.join(itt_test.TMP, "quantize-peer")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    checks = itt_test.Checks()

    def tensors(path):
        return {t.name: t for t in gguf.GGUFReader(path).tensors}

    def values(t):
        data = np.asarray(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            return data.astype(np.float64).reshape(-1)
        return gguf.quants.dequantize(data, t.tensor_type).astype(np.float64).reshape(-1)

    small = os.path.join(tmp, "small-f32.gguf")
    itt_test.run([itt_test.tool("itt-synth"), small, "--dim", "256", "--layers", "16",
                  "--heads", "8", "--kv-heads", "2", "--ffn", "544", "--vocab", "512",
                  "--seed", "5"])
    src = tensors(small)
    # per ggml type: [squared error ours, llama's, values, tensors, identical]
    per_type = {}

    def check_ftype(name):
        ours = os.path.join(tmp, "ours-%s.gguf" % name)
        theirs = os.path.join(tmp, "llama-%s.gguf" % name)
        itt_test.run([itt_test.tool("itt-quantize"), small, ours, name])
        itt_test.run([os.path.join(pbin, "llama-quantize"), small, theirs, name, "2"])
        a, b = tensors(ours), tensors(theirs)
        assert set(a) == set(b), "tensor names differ"
        wrong = ["%s %s (llama %s)" % (n, a[n].tensor_type.name, b[n].tensor_type.name)
                 for n in a if a[n].tensor_type != b[n].tensor_type]
        assert not wrong, "types differ: " + ", ".join(wrong[:6])
        for n in a:
            t = a[n].tensor_type
            if t == gguf.GGMLQuantizationType.F32:
                continue
            s = per_type.setdefault(t.name, [0.0, 0.0, 0, 0, 0])
            s[3] += 1
            s[4] += bool(np.array_equal(np.asarray(a[n].data).view(np.uint8),
                                        np.asarray(b[n].data).view(np.uint8)))
            if n in RMS_TENSORS:
                x = values(src[n])
                s[0] += float(np.sum((values(a[n]) - x) ** 2))
                s[1] += float(np.sum((values(b[n]) - x) ** 2))
                s[2] += x.size
        os.unlink(ours)
        os.unlink(theirs)

    for name in FTYPES:
        checks.check("%s: every tensor's type as llama-quantize chooses" % name,
                     lambda name=name: check_ftype(name))

    def check_rms():
        print("%-6s %8s %10s %12s %12s %7s" % ("type", "tensors", "identical", "rms ours",
                                               "rms llama", "ratio"))
        bad = []
        for t, (eo, el, n, nt, same) in sorted(per_type.items()):
            if n == 0:
                print("%-6s %8d %10d %12s %12s" % (t, nt, same, "-", "-"))
                continue
            ro, rl = (eo / n) ** 0.5, (el / n) ** 0.5
            ratio = ro / rl if rl > 0 else (1.0 if ro == 0 else float("inf"))
            print("%-6s %8d %10d %12.4g %12.4g %7.4f" % (t, nt, same, ro, rl, ratio))
            if ratio > 1.1:
                bad.append("%s %.3f" % (t, ratio))
        want = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                "Q6_K", "F16", "BF16"}
        missing = want - set(per_type)
        assert not missing, "types never written: %s" % sorted(missing)
        assert not bad, "RMS error above 1.1x llama-quantize's: " + ", ".join(bad)

    checks.check("RMS error of every type within 1.1x of llama-quantize's", check_rms)

    def check_half_source(half):
        # llama-quantize widens F16/BF16 rows to F32 first, as we do: the same
        # types, and the same bytes when the rounding matches
        src16 = os.path.join(tmp, "small-%s.gguf" % half)
        ours = os.path.join(tmp, "ours-from-%s.gguf" % half)
        theirs = os.path.join(tmp, "llama-from-%s.gguf" % half)
        itt_test.run([itt_test.tool("itt-quantize"), small, src16, half])
        itt_test.run([itt_test.tool("itt-quantize"), src16, ours, "Q4_K_M"])
        itt_test.run([os.path.join(pbin, "llama-quantize"), src16, theirs, "Q4_K_M", "2"])
        a, b = tensors(ours), tensors(theirs)
        wrong = [n for n in a if a[n].tensor_type != b[n].tensor_type]
        assert not wrong, "types differ: %s" % wrong[:6]
        for n in ("blk.0.attn_q.weight", "blk.0.ffn_down.weight"):
            eo = float(np.sum((values(a[n]) - values(src[n])) ** 2))
            el = float(np.sum((values(b[n]) - values(src[n])) ** 2))
            assert eo <= 1.1 ** 2 * el, "%s: error %.4g vs llama %.4g" % (n, eo, el)
        for f in (src16, ours, theirs):
            os.unlink(f)

    for half in ("F16", "BF16"):
        checks.check("Q4_K_M from a %s file as llama-quantize" % half,
                     lambda half=half: check_half_source(half))

    big = os.path.join(peer, "models", "synth-llama-768x12-f32.gguf")
    if not os.path.exists(big):
        print("SKIP 768x12 model: %s is missing" % big)
    else:
        ours = os.path.join(tmp, "synth-768x12-q4_k_m.gguf")

        def check_big_types():
            itt_test.run([itt_test.tool("itt-quantize"), big, ours, "Q4_K_M"])
            ref = os.path.join(peer, "models", "synth-llama-768x12-q4_k_m.gguf")
            if not os.path.exists(ref):
                print("  (no %s to compare types with)" % ref)
                return
            a, b = tensors(ours), tensors(ref)
            assert set(a) == set(b), "tensor names differ"
            wrong = [n for n in a if a[n].tensor_type != b[n].tensor_type]
            assert not wrong, "types differ from llama-quantize's: %s" % wrong[:6]
            same = sum(np.array_equal(np.asarray(a[n].data).view(np.uint8),
                                      np.asarray(b[n].data).view(np.uint8)) for n in a)
            print("  %d of %d tensors byte-identical to llama-quantize's" % (same, len(a)))

        def check_llama_runs_it():
            assert os.path.exists(ours), "no Q4_K_M file (see the check before)"
            r = itt_test.run([os.path.join(pbin, "llama-simple"), "-m", ours, "-n", "8",
                              "Once upon a time"], timeout=120)
            text = r.stdout.decode(errors="replace").strip()
            assert "Once upon a time" in text and len(text) > len("Once upon a time"), \
                "llama-simple printed %r" % text[-300:]
            print("  llama-simple: %s" % text.replace("\n", " ")[:120])

        checks.check("768x12 Q4_K_M: the types of llama-quantize's file", check_big_types)
        checks.check("768x12 Q4_K_M: llama-simple loads it and generates", check_llama_runs_it)

    shutil.rmtree(tmp, ignore_errors=True)
    checks.finish()


if __name__ == "__main__":
    main()
