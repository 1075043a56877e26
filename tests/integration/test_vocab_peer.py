"""test_vocab_peer: the C tokenizer against llama.cpp's own test vectors.

llama.cpp's source tree ($ITT_PEER_DIR/llama.cpp, default
${TMPDIR:-/tmp}/itt-peer/llama.cpp) ships vocabulary-only GGUF files,
models/ggml-vocab-NAME.gguf, each with NAME.gguf.inp (texts separated by the
line "__ggml_vocab_test__") and NAME.gguf.out (the ids llama.cpp's
tests/test-tokenizer-0 expects per text: no BOS, special tokens not
parsed).  For every vocabulary itt claims, $ITT_BIN_DIR/itt-tokenize --inp
must give exactly those ids, and decoding the expected ids piece by piece
(itt-tokenize --decode) must give back the text's exact bytes (SentencePiece
vocabularies: after their dummy prefix space).  A vocabulary file missing
from the tree is reported and left out.

Random texts (letters of several scripts, digits, marks, emoji, whitespace
runs, stray bytes that break UTF-8; fixed seed) must decode back to
themselves after encoding (SentencePiece: with U+2581 read as a space, which
is how that model writes spaces).  Stray bytes are 0x80, 0xC3, 0xE2, 0xF0
only: bytes that never occur in UTF-8 (0xC0, 0xC1, 0xF5..0xFF) have no token
in several of these vocabularies (StarCoder, Falcon, MPT) or a user-defined
one (DeepSeek), so llama.cpp cannot round-trip them either.  A few facts of
the special tokens must hold too (BOS added for Llama 3 but not Qwen2,
<|eot_id|> / <|im_end|> end generation).

When the tree also has a build (include/llama.h, build/bin/libllama.so) and
a C compiler is at hand, tests/tools/peer-tokenize.c is compiled against it
and random valid UTF-8 texts (scripts, marks, digits, emoji, whitespace of
every kind, contractions, special-token texts) go through both tokenizers
with no flags and with BOS + special-token parsing: the ids must be equal.
Without a build that part is reported as not run.

A copy of a vocabulary whose tokenizer.ggml.pre (or tokenizer.ggml.model)
names something unknown must be refused with an error naming it.

Exit 77 (skip) when the peer tree is absent.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
SEP = b"\n__ggml_vocab_test__\n"

# (vocabulary, SentencePiece?) for each claimed vocabulary.
VOCABS = [
    ("llama-spm", True), ("phi-3", True),
    ("llama-bpe", False), ("qwen2", False), ("qwen35", False), ("gpt-2", False),
    ("deepseek-llm", False), ("deepseek-coder", False), ("starcoder", False),
    ("falcon", False), ("refact", False), ("command-r", False), ("mpt", False),
]


def skip(why):
    print("SKIP: " + why)
    sys.exit(SKIP)


def read_cases(inp_path):
    """The texts of a .inp file, split as test-tokenizer-0 splits them."""
    with open(inp_path, "rb") as f:
        raw = f.read()
    cases, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            cases.append(raw[pos:])
            break
        cases.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    return cases


def run(tool, args, stdin=b""):
    return subprocess.run([tool] + args, input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=120)


def check_vocab(tool, models, name, spm, peer):
    """(cases, encode passes, decode passes, (round trips ok, of), (agreeing
    with llama.cpp, of) or None, notes) for one vocabulary; a note is a
    failure."""
    path = os.path.join(models, "ggml-vocab-%s.gguf" % name)
    for p in (path, path + ".inp", path + ".out"):
        if not os.path.exists(p):
            return None
    texts = read_cases(path + ".inp")
    with open(path + ".out") as f:
        want = [[int(x) for x in line.split()] for line in f.read().split("\n")[:len(texts)]]
    notes = []
    if len(want) != len(texts):
        return len(texts), 0, 0, (0, 0), None, ["%d texts but %d id lines" % (len(texts), len(want))]

    p = run(tool, ["--inp", path + ".inp", path])
    if p.returncode != 0:
        return len(texts), 0, 0, (0, 0), None, [p.stderr.decode(errors="replace").strip()]
    got = [[int(x) for x in line.split()] for line in p.stdout.decode().split("\n")[:-1]]
    enc_ok = 0
    for i, (text, w) in enumerate(zip(texts, want)):
        g = got[i] if i < len(got) else None
        if g == w:
            enc_ok += 1
        elif len(notes) < 3:
            notes.append("encode %r: got %s want %s" % (text[:60], (g or [])[:20], w[:20]))

    ids_in = "".join(" ".join(str(x) for x in w) + "\n" for w in want).encode()
    p = run(tool, ["--decode", path], ids_in)
    if p.returncode != 0:
        return len(texts), enc_ok, 0, (0, 0), None, notes + [p.stderr.decode(errors="replace").strip()]
    dec = [json.loads(line).encode("utf-8", "surrogateescape")
           for line in p.stdout.decode().split("\n")[:-1]]
    dec_ok = 0
    for text, d in zip(texts, dec):
        if d == text or (spm and text and d == b" " + text):
            dec_ok += 1
        elif len(notes) < 6:
            notes.append("decode %r: got %r" % (text[:60], d[:60]))
    rt_texts = random_texts(300)
    rt_ok, rt_notes = check_roundtrip(tool, path, spm, rt_texts)
    notes += rt_notes + check_info(tool, path, name)
    peer_res = None
    if peer:
        p_texts = peer_texts(300)
        p_ok, p_notes = check_peer(tool, peer, path, p_texts)
        peer_res = (p_ok, 2 * len(p_texts))
        notes += p_notes
    return len(texts), enc_ok, dec_ok, (rt_ok, len(rt_texts)), peer_res, notes


# vocabulary: (add_bos, ids that must end generation) per llama.cpp.
INFO = {
    "llama-bpe": (True, [128001, 128009]),   # <|end_of_text|>, <|eot_id|>
    "qwen2": (False, [151643, 151645]),      # <|endoftext|>, <|im_end|>
    "gpt-2": (False, [50256]),
    "llama-spm": (True, [2]),
    "phi-3": (True, [32000, 32007]),         # <|endoftext|>, <|end|>
}

PIECES = ["a", "Z", "hello", " world", "'s", "'LL", "don't", "0", "12345", " 42",
          "\u00e9", "e\u0301", "\u65e5\u672c\u8a9e", "\u4f60\u597d", "\ud55c",
          "\u0416\u0438", "\u03a9", "\U0001f600", "\U0001f44d\U0001f3fd", "\u200d",
          " ", "  ", "\t", "\n", "\r\n", "\n\n", "\u00a0", "\u3000", "!", "...", "$",
          "(", "_", "<|", "\u2581", "\u0120", "\u00ff"]


def random_texts(n):
    rng = random.Random(12)
    texts = []
    for _ in range(n):
        parts = [rng.choice(PIECES) for _ in range(rng.randint(1, 12))]
        t = "".join(parts).encode()
        if rng.random() < 0.15:
            i = rng.randint(0, len(t))
            t = t[:i] + bytes([rng.choice([0x80, 0xc3, 0xe2, 0xf0])]) + t[i:]
        texts.append(t)
    return texts


def check_roundtrip(tool, path, spm, texts):
    """Encodes texts and decodes the ids: how many came back exactly."""
    lines = "".join(json.dumps(t.decode("utf-8", "surrogateescape")) + "\n" for t in texts)
    p = run(tool, [path], lines.encode("ascii"))
    if p.returncode != 0:
        return 0, [p.stderr.decode(errors="replace").strip()]
    p = run(tool, ["--decode", path], p.stdout)
    if p.returncode != 0:
        return 0, [p.stderr.decode(errors="replace").strip()]
    dec = [json.loads(line).encode("utf-8", "surrogateescape")
           for line in p.stdout.decode().split("\n")[:-1]]
    ok, notes = 0, []
    for t, d in zip(texts, dec):
        if spm:
            t = t.replace("\u2581".encode(), b" ")
        if d == t or (spm and t and d == b" " + t):
            ok += 1
        elif len(notes) < 3:
            notes.append("roundtrip %r gave %r" % (t[:60], d[:60]))
    return ok, notes


def check_info(tool, path, name):
    if name not in INFO:
        return []
    p = run(tool, ["--info", path])
    if p.returncode != 0:
        return [p.stderr.decode(errors="replace").strip()]
    info = json.loads(p.stdout)
    add_bos, eog = INFO[name]
    notes = []
    if info["add_bos"] != add_bos:
        notes.append("add_bos is %s, llama.cpp says %s" % (info["add_bos"], add_bos))
    missing = [i for i in eog if i not in info["eog"]]
    if missing:
        notes.append("ids %s do not end generation (eog %s)" % (missing, info["eog"][:10]))
    return notes


RANGES = [(0x20, 0x7e)] * 6 + [
    (0x01, 0x1f), (0xa0, 0xff), (0x100, 0x24f), (0x300, 0x36f), (0x370, 0x3ff), (0x400, 0x4ff),
    (0x590, 0x6ff), (0x900, 0x97f), (0xe00, 0xe7f), (0x1100, 0x11ff), (0x2000, 0x206f),
    (0x2070, 0x218f), (0x2190, 0x27bf), (0x3000, 0x30ff), (0x4e00, 0x9fff), (0xac00, 0xd7a3),
    (0xff00, 0xffef), (0x1f300, 0x1faff), (0x10000, 0x1004f), (0xe000, 0xe00f), (0x660, 0x669),
    (0x85, 0x85), (0x1680, 0x1680), (0xfff0, 0xfffd), (0x1d400, 0x1d7ff), (0x20000, 0x2000f)]
WORDS = ["'s", "'S", "'re", "'RE", "'ll", "'Ve", "'d", "'m", "'t", " ", "  ", "   ", "\n", "\n\n",
         "\r\n", "\t", " \n ", "123", "1234567", " 42", "hello", " World", "don't", "...", "``",
         "<|endoftext|>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<|user|>",
         "<|end|>", "<|eot_id|>", "<|begin_of_text|>", "<|start_header_id|>", "<fim_prefix>",
         "<\uff5cend\u2581of\u2581sentence\uff5c>", "<|END_OF_TURN_TOKEN|>", "\u2581", " \u2581x"]


def peer_texts(n):
    rng = random.Random(31)
    texts = []
    for _ in range(n):
        out = []
        for _ in range(rng.randint(1, 25)):
            if rng.random() < 0.35:
                out.append(rng.choice(WORDS))
            else:
                lo, hi = rng.choice(RANGES)
                out.append(chr(rng.randint(lo, hi)) * rng.choice([1, 1, 1, 2, 3]))
        texts.append("".join(out).encode())
    return texts


def build_peer(peer_root, tmpdir):
    """peer-tokenize built against llama.cpp's library, or (None, why)."""
    lib = os.path.join(peer_root, "build", "bin")
    src = os.path.join(os.environ.get("ITT_SOURCE_DIR") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", ".."), "tests", "tools",
        "peer-tokenize.c")
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not os.path.exists(os.path.join(lib, "libllama.so")):
        return None, "no llama.cpp build (%s/libllama.so)" % lib
    if not cc:
        return None, "no C compiler"
    exe = os.path.join(tmpdir, "peer-tokenize")
    p = subprocess.run([cc, "-O1", "-I", os.path.join(peer_root, "include"),
                        "-I", os.path.join(peer_root, "ggml", "include"), src, "-L", lib,
                        "-lllama", "-Wl,-rpath," + lib, "-o", exe],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    if p.returncode != 0:
        return None, "peer-tokenize does not build: " + p.stderr.decode(errors="replace")[:300]
    return exe, ""


def check_peer(tool, peer, path, texts):
    """Texts through llama.cpp and itt, no flags and BOS + special: how many
    agree, and notes on those that do not."""
    ok, notes = 0, []
    for flags, args in ((0, []), (3, ["--bos", "--special"])):
        p = run(peer, [path, str(flags)], b"\0".join(texts))
        want = [line.split() for line in p.stdout.decode().split("\n")[:-1]]
        lines = "".join(json.dumps(t.decode()) + "\n" for t in texts)
        q = run(tool, args + [path], lines.encode("ascii"))
        got = [line.split() for line in q.stdout.decode().split("\n")[:-1]]
        if p.returncode != 0 or q.returncode != 0 or len(want) != len(texts):
            notes.append("flags %d: peer exit %d (%d lines), itt exit %d: %s" % (
                flags, p.returncode, len(want), q.returncode,
                (p.stderr + q.stderr).decode(errors="replace").strip()[:200]))
            continue
        for t, w, g in zip(texts, want, got):
            if w == g:
                ok += 1
            elif len(notes) < 3:
                notes.append("flags %d, text %r:\n  llama.cpp %s\n  itt       %s"
                             % (flags, t[:60], w[:24], g[:24]))
    return ok, notes


def patched(src, dst, key, old, new):
    """Copies the GGUF src to dst with the string value old of key replaced
    by new (same length, so every offset stays valid)."""
    assert len(old) == len(new)
    with open(src, "rb") as f:
        data = f.read()
    k = key.encode()
    at = data.find(len(k).to_bytes(8, "little") + k + (8).to_bytes(4, "little")
                   + len(old).to_bytes(8, "little") + old)
    if at < 0:
        return False
    at += 8 + len(k) + 4 + 8
    with open(dst, "wb") as f:
        f.write(data[:at] + new + data[at + len(old):])
    return True


def check_refusals(tool, models, tmpdir):
    """Unknown pre-tokenizer and tokenizer model names are refused, named."""
    failures = 0
    cases = [("qwen2", "tokenizer.ggml.pre", b"qwen2", b"qwen9"),
             ("gpt-2", "tokenizer.ggml.model", b"gpt2", b"gpt9")]
    for vocab, key, old, new in cases:
        src = os.path.join(models, "ggml-vocab-%s.gguf" % vocab)
        dst = os.path.join(tmpdir, "unknown-%s.gguf" % vocab)
        if not os.path.exists(src):
            print("note: %s absent, refusal of an unknown %s not checked" % (src, key))
            continue
        if not patched(src, dst, key, old, new):
            print("FAIL: %s: %s = %r not found to patch" % (src, key, old))
            failures += 1
            continue
        p = run(tool, [dst], b'"hello"\n')
        err = p.stderr.decode(errors="replace")
        named = ('"%s"' % new.decode()) in err
        print("unknown %s %r: exit %d, %s" % (key, new.decode(), p.returncode,
                                             "refused, named" if named else "NOT named"))
        if p.returncode == 0 or not named:
            print("FAIL: stderr was: " + err.strip())
            failures += 1
    return failures


def main():
    peer = os.environ.get("ITT_PEER_DIR") or os.path.join(
        os.environ.get("TMPDIR") or "/tmp", "itt-peer")
    models = os.path.join(peer, "llama.cpp", "models")
    if not os.path.isdir(models):
        skip("llama.cpp's tree is not at %s (set ITT_PEER_DIR)" % os.path.dirname(models))
    tool = os.path.join(os.environ.get("ITT_BIN_DIR", ""), "itt-tokenize")
    if not os.access(tool, os.X_OK):
        print("FAIL: %s is not built (ITT_BIN_DIR)" % tool)
        return 1

    failures = 0
    rows = []
    tmp = tempfile.TemporaryDirectory(dir=os.environ.get("ITT_TMP_DIR"))
    peer, why = build_peer(os.path.dirname(models), tmp.name)
    if not peer:
        print("note: random texts not compared with llama.cpp: " + why)
    for name, spm in VOCABS:
        r = check_vocab(tool, models, name, spm, peer)
        if r is None:
            rows.append((name, "absent", "", "", "", ""))
            continue
        n, enc_ok, dec_ok, (rt_ok, rt_n), peer_res, notes = r
        rows.append((name, str(n), "%d/%d" % (enc_ok, n), "%d/%d" % (dec_ok, n),
                     "%d/%d" % (rt_ok, rt_n), "%d/%d" % peer_res if peer_res else "-"))
        for note in notes:
            print("MISMATCH %s: %s" % (name, note))
        if enc_ok != n or dec_ok != n or rt_ok != rt_n or notes:
            failures += 1
    fmt = "%-16s %6s %9s %9s %10s %10s"
    print(fmt % ("vocab", "cases", "encode", "decode", "roundtrip", "llama.cpp"))
    for row in rows:
        print(fmt % row)
    if all(r[1] == "absent" for r in rows):
        skip("no ggml-vocab-*.gguf with .inp/.out under %s" % models)

    failures += check_refusals(tool, models, tmp.name)
    tmp.cleanup()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
