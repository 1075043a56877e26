"""test_tokenizer_reference: the C tokenizer against SentencePiece.

For each vocabulary (stories260K.gguf, and the llama2.c files tok512.bin and
tok105.bin, the last one character-level without byte tokens) the texts
below are encoded with BOS by $ITT_BIN_DIR/itt-tokenize and by
tests/ref/spm_reference.py (Google's sentencepiece library), and the ids
must be identical.  Texts: the first 300 paragraphs of
tinystories-valid.dev.txt ($ITT_DATA_DIR, else $ITT_SOURCE_DIR/../shared/data;
left out with a note when absent) and edge cases: empty text, spaces,
newlines, tabs, accents, quotes, emoji, CJK, bytes that are not UTF-8, long
words.  The real vocabularies have distinct merge scores, so a synthetic
llama2.c vocabulary whose merges share scores (written to a temporary
directory) checks the leftmost-first rule on random strings.

Exit 77 (skip) when ITT_MODEL_DIR or the models are missing or the
sentencepiece module cannot be imported.
"""

import json
import os
import random
import struct
import subprocess
import sys
import tempfile

SKIP = 77
N_PARAGRAPHS = 300

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))


def skip(why):
    print("SKIP: " + why)
    sys.exit(SKIP)


EDGE_CASES = [
    b"", b" ", b"  ", b"   ", b"a", b" a", b"a ", b"  leading", b"trailing  ",
    b"multiple    spaces   in  between", b"\n", b"\n\n", b"line one\nline two\n",
    b" \n ", b"\t", b"tab\tseparated\tvalues\t", b" \t \n \r\n ",
    "é".encode(), "café naïve résumé".encode(),
    "\u201cquoted\u201d and \u2018single\u2019".encode(),
    "emoji 😀🎉 👍🏽 family 👨‍👩‍👧".encode(), "日本語の文章と中文。".encode(),
    "mixed é“😀日”".encode(), "\u2581 literal lower one eighth block \u2581\u2581".encode(),
    "no\u00a0break\u200aspace".encode(),
    b"<s>", b"</s>", b"<unk>", b"<0x41>", b"Once upon a time<s>there",
    b"\xff", b"\x80abc", b"abc\xc3", b"\xc3\x28", b"\xe2\x82", b"\xe2\x82 a", b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xf0\x9f\x98", b"\xf0\x9f\x98\x80\xf0\x9f", b"\xfe\xfe\xff",
    b"a\xffb \xfe c", b"\x00", b"a\x00b", b"\x01\x1f\x7f", b"1234567890 3.14159 -42",
    b"!!!???...,,,;;;", b"The the THE tHe", b"don't won't it's", b'"Hello," she said.',
    b"a" * 5000, b"supercalifragilistic" * 300, b"x" * 20000, b"ab " * 3000,
    ("Lily 😀 " * 500).encode(), b"\xff" * 1000,
]


def load_paragraphs():
    data_dir = os.environ.get("ITT_DATA_DIR")
    if not data_dir and os.environ.get("ITT_SOURCE_DIR"):
        data_dir = os.path.join(os.environ["ITT_SOURCE_DIR"], "..", "shared", "data")
    path = os.path.join(data_dir or "", "tinystories-valid.dev.txt")
    if not data_dir or not os.path.exists(path):
        print("note: %s not found (set ITT_DATA_DIR); edge cases only" % path)
        return []
    with open(path, "rb") as f:
        paras = [p.strip(b"\n") for p in f.read().replace(b"\r\n", b"\n").split(b"\n\n")]
    return [p for p in paras if p][:N_PARAGRAPHS]


def write_tied_vocab(path):
    """A llama2.c tokenizer file whose merges mostly share one score, so the
    leftmost-first rule among equal scores decides; ' ' stands for U+2581
    as in llama2.c files."""
    pieces = [("<unk>", 0.0), ("\n<s>\n", 0.0), ("\n</s>\n", 0.0)]
    pieces += [("<0x%02X>" % b, 0.0) for b in range(256)]
    pieces += [(c, -10.0) for c in " abc"]
    pieces += [(m, -1.0) for m in ["aa", "ab", "ba", "bc", "cb", " a", " b", "aab", "bab"]]
    pieces += [("abc", -0.5), ("aaa", -2.0), (" aa", -1.0), ("cc", -1.0)]
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(p.encode()) for p, _ in pieces)))
        for p, score in pieces:
            b = p.encode()
            f.write(struct.pack("<fi", score, len(b)) + b)


def tied_texts():
    rng = random.Random(1)
    texts = [b"aaaa", b"abab", b"baba", b"aabab", b"abcabc", b"  aa ab", b"bcbcb", b"ccc"]
    for _ in range(300):
        texts.append("".join(rng.choice("aab c\u00e9") for _ in range(rng.randint(1, 30)))
                     .encode())
    return texts


def run_c(tool, args, texts):
    lines = "".join(json.dumps(t.decode("utf-8", "surrogateescape")) + "\n" for t in texts)
    p = subprocess.run([tool, "--bos"] + args, input=lines.encode("ascii"),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    if p.returncode != 0:
        raise RuntimeError("itt-tokenize %s failed (%d): %s"
                           % (" ".join(args), p.returncode, p.stderr.decode(errors="replace")))
    out = p.stdout.decode().split("\n")
    if len(out) != len(texts) + 1 or out[-1] != "":
        raise RuntimeError("itt-tokenize gave %d lines for %d texts" % (len(out) - 1, len(texts)))
    return [[int(x) for x in line.split()] for line in out[:-1]]


def main():
    try:
        import spm_reference
    except ImportError as e:
        skip("sentencepiece is not importable (%s); install python3-sentencepiece" % e)
    model_dir = os.environ.get("ITT_MODEL_DIR")
    if not model_dir:
        skip("ITT_MODEL_DIR is not set")
    vocabs = [("stories260K.gguf", []), ("tok512.bin", ["--llama2c"]),
              ("tok105.bin", ["--llama2c"])]
    for name, _ in vocabs:
        if not os.path.exists(os.path.join(model_dir, name)):
            skip("%s is missing from ITT_MODEL_DIR=%s" % (name, model_dir))
    tool = os.path.join(os.environ.get("ITT_BIN_DIR", ""), "itt-tokenize")
    if not os.access(tool, os.X_OK):
        print("FAIL: %s is not built (ITT_BIN_DIR)" % tool)
        return 1

    texts = load_paragraphs() + EDGE_CASES
    tmp = tempfile.TemporaryDirectory(dir=os.environ.get("ITT_TMP_DIR"))
    tied = os.path.join(tmp.name, "tied.bin")
    write_tied_vocab(tied)
    cases = [(name, args, os.path.join(model_dir, name), texts) for name, args in vocabs]
    cases.append(("tied.bin (synthetic, equal scores)", ["--llama2c"], tied, tied_texts()))
    failures = 0
    for name, args, path, texts in cases:
        ref = (spm_reference.Reference.from_llama2c(path) if args
               else spm_reference.Reference.from_gguf(path))
        got = run_c(tool, args + [path], texts)
        bad = 0
        for text, ids in zip(texts, got):
            want = ref.encode(text, bos=True)
            if ids != want:
                bad += 1
                if bad <= 5:
                    print("MISMATCH %s: text %r\n  C:   %s\n  ref: %s"
                          % (name, text[:120], ids[:40], want[:40]))
        n_ids = sum(len(x) for x in got)
        print("%s: %d texts, %d ids, %d mismatches" % (name, len(texts), n_ids, bad))
        failures += bad
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
