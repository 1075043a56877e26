"""spm_reference: token ids from Google's SentencePiece, as a reference for
the C tokenizer (worker/engine/tokenizer.c).

The vocabulary is read here, independently of the C code: from a GGUF file
(a minimal metadata parser written from the public GGUF specification) or
from a llama2.c tokenizer .bin.  It is turned into a SentencePiece BPE
ModelProto (identity normalizer, dummy prefix, no whitespace folding, byte
fallback when byte pieces exist) and encoded by the sentencepiece library.

The one place where SentencePiece and llama.cpp's "llama" tokenizer differ
by design is input that is not valid UTF-8: SentencePiece replaces each bad
byte with U+FFFD, llama.cpp keeps it as a one-byte symbol.  We follow
llama.cpp: the text is cut at bad bytes, the valid runs are encoded by
SentencePiece (no merge can cross a bad byte), and each bad byte becomes
its <0xXX> piece (or <unk> when the vocabulary has no byte pieces; then,
as SentencePiece does, a run of unknown characters and bad bytes gives one
<unk>).

    ref = Reference.from_gguf(path)         # or Reference.from_llama2c(path)
    ids = ref.encode(b"Once upon a time", bos=True)

Command line: spm_reference.py (--gguf F | --llama2c F) [--bos] TEXT...
prints one line of ids per TEXT; with --stdin, each input line is a JSON
string (lone surrogates U+DC80..U+DCFF stand for raw bytes, as Python's
surrogateescape writes them) and one line of ids is printed per line.
"""

import json
import struct
import sys

from sentencepiece import SentencePieceProcessor
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

# Token types, as in GGUF's tokenizer.ggml.token_type (= SentencePiece's).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SPACE = "\u2581"


class VocabError(Exception):
    pass


# ---- GGUF metadata --------------------------------------------------------

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
                 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_metadata(buf):
    """Returns {key: value} for the metadata of a GGUF v2/v3 image; strings
    stay bytes, arrays become lists."""
    pos = 0

    def take(n):
        nonlocal pos
        if n < 0 or pos + n > len(buf):
            raise VocabError("gguf: truncated at offset %d" % pos)
        pos += n
        return buf[pos - n:pos]

    def scalar(fmt):
        return struct.unpack(fmt, take(struct.calcsize(fmt)))[0]

    def string():
        return bytes(take(scalar("<Q")))

    def value(vtype):
        if vtype in _GGUF_SCALARS:
            return scalar(_GGUF_SCALARS[vtype])
        if vtype == _GGUF_STRING:
            return string()
        if vtype == _GGUF_ARRAY:
            etype, n = scalar("<I"), scalar("<Q")
            if etype == _GGUF_ARRAY:
                raise VocabError("gguf: nested arrays are not supported here")
            if n > len(buf):
                raise VocabError("gguf: array of %d elements is longer than the file" % n)
            return [value(etype) for _ in range(n)]
        raise VocabError("gguf: unknown value type %d" % vtype)

    if take(4) != b"GGUF":
        raise VocabError("gguf: bad magic")
    version = scalar("<I")
    if version not in (2, 3):
        raise VocabError("gguf: version %d is not supported" % version)
    scalar("<Q")  # tensor count: not needed
    n_kv = scalar("<Q")
    meta = {}
    for _ in range(n_kv):
        key = string().decode("utf-8")
        meta[key] = value(scalar("<I"))
    return meta


def read_gguf_vocab(path):
    with open(path, "rb") as f:
        meta = _gguf_metadata(f.read())
    model = meta.get("tokenizer.ggml.model")
    if model != b"llama":
        raise VocabError("%s: tokenizer.ggml.model is %r, not 'llama'" % (path, model))
    tokens = meta["tokenizer.ggml.tokens"]
    n = len(tokens)
    scores = meta.get("tokenizer.ggml.scores", [0.0] * n)
    types = meta.get("tokenizer.ggml.token_type", [NORMAL] * n)
    if len(scores) != n or len(types) != n:
        raise VocabError("%s: tokens/scores/token_type lengths differ" % path)
    return {
        "tokens": tokens, "scores": scores, "types": types,
        "bos": meta.get("tokenizer.ggml.bos_token_id", -1),
        "eos": meta.get("tokenizer.ggml.eos_token_id", -1),
        "unk": meta.get("tokenizer.ggml.unknown_token_id", -1),
        "add_space_prefix": meta.get("tokenizer.ggml.add_space_prefix", True),
    }


# ---- llama2.c tokenizer.bin -----------------------------------------------

def _is_byte_piece(tok):
    return (len(tok) == 6 and tok.startswith(b"<0x") and tok.endswith(b">")
            and all(c in b"0123456789ABCDEFabcdef" for c in tok[3:5]))


def read_llama2c_vocab(path):
    """int32 max_token_length, then per token: float32 score, int32 length,
    bytes.  llama2.c's exporter wrote U+2581 as ' ' and ids 1/2 as
    "\\n<s>\\n" / "\\n</s>\\n"; both are undone here."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 4:
        raise VocabError("%s: truncated header" % path)
    pos = 4
    tokens, scores = [], []
    while pos < len(buf):
        if pos + 8 > len(buf):
            raise VocabError("%s: truncated token %d" % (path, len(tokens)))
        score, n = struct.unpack_from("<fi", buf, pos)
        pos += 8
        if n < 0 or pos + n > len(buf):
            raise VocabError("%s: bad length of token %d" % (path, len(tokens)))
        tokens.append(buf[pos:pos + n])
        scores.append(score)
        pos += n
    types = []
    for i, tok in enumerate(tokens):
        if i == 0:
            types.append(UNKNOWN)
        elif i in (1, 2):
            types.append(CONTROL)
            tokens[i] = tok.strip(b"\n")
        elif _is_byte_piece(tok):
            types.append(BYTE)
        else:
            types.append(NORMAL)
            tokens[i] = tok.replace(b" ", SPACE.encode("utf-8"))
    return {"tokens": tokens, "scores": scores, "types": types,
            "bos": 1, "eos": 2, "unk": 0, "add_space_prefix": True}


# ---- the reference ---------------------------------------------------------

def build_model_proto(vocab, add_dummy_prefix):
    m = spm_pb2.ModelProto()
    has_bytes = BYTE in vocab["types"]
    ts = m.trainer_spec
    ts.model_type = spm_pb2.TrainerSpec.BPE
    ts.vocab_size = len(vocab["tokens"])
    ts.byte_fallback = has_bytes
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = vocab["unk"], vocab["bos"], vocab["eos"], -1
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = add_dummy_prefix
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    seen = set()
    for i, (tok, score, typ) in enumerate(zip(vocab["tokens"], vocab["scores"], vocab["types"])):
        p = m.pieces.add()
        text = tok.decode("utf-8")
        if not text or text in seen:
            # SentencePiece refuses empty and repeated pieces; the C side
            # ignores them for lookups (the first id wins), so a control
            # piece no text can reach stands in for them.
            text, typ = "<itt-placeholder-%d>" % i, CONTROL
        seen.add(text)
        p.piece = text
        p.score = score
        p.type = typ if typ in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL
    return m


class Reference:
    def __init__(self, vocab):
        self.vocab = vocab
        self.has_bytes = BYTE in vocab["types"]
        self.byte_id = {}
        for i, (tok, typ) in enumerate(zip(vocab["tokens"], vocab["types"])):
            if typ == BYTE:
                self.byte_id.setdefault(int(tok[3:5], 16), i)
        self.sp = {}
        for prefix in (False, True):
            sp = SentencePieceProcessor()
            sp.LoadFromSerializedProto(build_model_proto(vocab, prefix).SerializeToString())
            self.sp[prefix] = sp

    @classmethod
    def from_gguf(cls, path):
        return cls(read_gguf_vocab(path))

    @classmethod
    def from_llama2c(cls, path):
        return cls(read_llama2c_vocab(path))

    def _bad_byte(self, b):
        if self.has_bytes:
            return self.byte_id.get(b, self.vocab["unk"])
        return self.vocab["unk"]

    def encode(self, text, bos=False):
        """text: bytes (any) or str (lone surrogates U+DC80..U+DCFF are raw
        bytes).  Returns the list of ids."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "surrogateescape")
        ids = [self.vocab["bos"]] if bos else []
        if not text:
            return ids
        prefix = bool(self.vocab["add_space_prefix"])
        if not any(0xDC80 <= ord(c) <= 0xDCFF for c in text):
            return ids + self.sp[prefix].EncodeAsIds(text)
        # Cut at bad bytes; the dummy prefix goes before the first run only.
        runs, cur = [], []
        for c in text:
            if 0xDC80 <= ord(c) <= 0xDCFF:
                if cur:
                    runs.append("".join(cur))
                    cur = []
                runs.append(ord(c) - 0xDC00)
            else:
                cur.append(c)
        if cur:
            runs.append("".join(cur))
        if prefix and isinstance(runs[0], int):
            runs.insert(0, "")
        for k, run in enumerate(runs):
            if isinstance(run, int):
                ids.append(self._bad_byte(run))
            elif k == 0 and prefix:
                ids += self.sp[False].EncodeAsIds(" " + run)
            else:
                ids += self.sp[False].EncodeAsIds(run)
        if not self.has_bytes:
            # SentencePiece folds a run of unknown pieces into one <unk>; do
            # the same across the cuts made above.
            start = 1 if bos else 0
            out = ids[:start]
            for i in ids[start:]:
                if not (i == self.vocab["unk"] and len(out) > start and out[-1] == i):
                    out.append(i)
            ids = out
        return ids


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf")
    src.add_argument("--llama2c")
    ap.add_argument("--bos", action="store_true")
    ap.add_argument("--stdin", action="store_true", help="JSON string lines on stdin")
    ap.add_argument("texts", nargs="*")
    a = ap.parse_args(argv)
    ref = Reference.from_gguf(a.gguf) if a.gguf else Reference.from_llama2c(a.llama2c)
    texts = [json.loads(line) for line in sys.stdin] if a.stdin else a.texts
    for t in texts:
        print(" ".join(str(i) for i in ref.encode(t.encode("utf-8", "surrogateescape"), a.bos)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
