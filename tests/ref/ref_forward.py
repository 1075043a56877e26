"""ref_forward: a NumPy reference of the llama-family forward pass, in float64.

It exists to check the C engine, so it is written for obviousness, not
speed: every step is the textbook formula on whole [n_tokens, ...] matrices,
recomputed from scratch on each call (no KV cache).  Weights are read by
gguf_read (dequantised to float32, which is exact for F16/BF16/Q8_0/Q4_0)
and then widened to float64; all arithmetic is float64.

Per layer, with rmsnorm(x, w) = x / sqrt(mean(x^2) + eps) * w:
    h  = rmsnorm(x, attn_norm)
    x += Wo . attn(RoPE(Wq h + bq), RoPE(Wk h + bk), Wv h + bv)   causal, GQA
    h  = rmsnorm(x, ffn_norm)
    x += W2 . (silu(W1 h) * (W3 h))                    W1 = gate, W3 = up
then logits = output . rmsnorm(x, output_norm) (output tied to token_embd
when absent; biases bq, bk, bv are zero when absent).  RoPE: within each
head, pair i is rotated by pos * s * base^(-2i / n_rot) / f_i, n_rot =
rope.dimension_count (default head_dim; dims past n_rot pass through),
s = 1 / rope.scaling.factor under linear scaling (else 1), f_i =
rope_freqs.weight[i] (else 1).  Pair i is (2i, 2i+1) in llama.cpp's
"normal" mode (arch llama) and (i, i + n_rot/2) in NeoX mode (arch qwen2).
Grouped-query attention: query head h reads kv head h // (n_heads / n_kv).
Metadata keys are "<arch>." + key for the arch the file names.

Module use:
    m = load_gguf(path)          (or load_llama2c(path) for a llama2.c .bin)
    y = forward(m, tokens, layers=(a, b), hidden_in=None)
y is [n_tokens, vocab] logits when b == n_layers, else the residual stream
[n_tokens, dim] after layer b-1; when a > 0 the input is hidden_in
[n_tokens, dim] instead of the token embeddings.

Techniques (keyword arguments of forward): head perturbation (perturb,
blend), a draft pass over the first layers (stop_layer) and early exit
(exit_layers, threshold, info); see forward's docstring.

Command line:
    ref_forward.py MODEL.gguf --tokens 1,2,3 [--layers A:B]
                   [--hidden-in FILE] [--perturb L:H,... [--blend U]]
                   [--stop-layer K] --out FILE
writes raw little-endian float32 [n_tokens][vocab or dim];
    ref_forward.py MODEL.gguf --generate N
prints N greedily decoded tokens after BOS.
"""

import argparse
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_read  # noqa: E402


class Model:
    """Config plus float64 weights, each [out, in] (y = x @ W.T)."""

    def __init__(self, cfg, weights, vocab=None, bos=1):
        self.cfg = cfg  # dict: dim n_layers n_heads n_kv_heads head_dim ffn eps base n_rot ctx vocab
        self.w = weights  # dict of np.float64 arrays
        self.vocab = vocab  # list of token pieces (str or bytes) or None
        self.bos = bos


def _meta_get(meta, arch, key, default=None):
    v = meta.get("%s.%s" % (arch, key), default)
    if v is None:
        raise gguf_read.GgufError("missing metadata %s.%s" % (arch, key))
    return v


def load_gguf(path):
    meta, tensors = gguf_read.read_gguf(path)
    arch = meta.get("general.architecture", "llama")
    n_heads = int(_meta_get(meta, arch, "attention.head_count"))
    dim = int(_meta_get(meta, arch, "embedding_length"))
    head_dim = int(meta.get("%s.attention.key_length" % arch, dim // n_heads))
    cfg = {
        "dim": dim,
        "n_layers": int(_meta_get(meta, arch, "block_count")),
        "n_heads": n_heads,
        "n_kv_heads": int(_meta_get(meta, arch, "attention.head_count_kv", n_heads)),
        "head_dim": head_dim,
        "ffn": int(_meta_get(meta, arch, "feed_forward_length")),
        "eps": float(_meta_get(meta, arch, "attention.layer_norm_rms_epsilon")),
        "base": float(_meta_get(meta, arch, "rope.freq_base", 10000.0)),
        "n_rot": int(_meta_get(meta, arch, "rope.dimension_count", head_dim)),
        "ctx": int(_meta_get(meta, arch, "context_length")),
        "neox": arch == "qwen2",
        "scale": 1.0,
    }
    if arch not in ("llama", "qwen2"):
        raise gguf_read.GgufError("architecture %r is not modelled" % arch)
    stype = meta.get("%s.rope.scaling.type" % arch, "linear")
    factor = float(meta.get("%s.rope.scaling.factor" % arch,
                            meta.get("%s.rope.scale_linear" % arch, 0.0)))
    if stype not in ("linear", "none"):
        raise gguf_read.GgufError("rope scaling %r is not modelled" % stype)
    if stype == "linear" and factor != 0.0:
        cfg["scale"] = 1.0 / factor

    def get(name):
        if name not in tensors:
            raise gguf_read.GgufError("%s: missing tensor %s" % (path, name))
        return tensors[name].array().astype(np.float64)

    w = {"token_embd": get("token_embd.weight"), "output_norm": get("output_norm.weight")}
    w["output"] = get("output.weight") if "output.weight" in tensors else w["token_embd"]
    for l in range(cfg["n_layers"]):
        for t in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                  "ffn_norm", "ffn_gate", "ffn_down", "ffn_up"):
            w["blk.%d.%s" % (l, t)] = get("blk.%d.%s.weight" % (l, t))
        for t in ("attn_q", "attn_k", "attn_v"):
            if "blk.%d.%s.bias" % (l, t) in tensors:
                w["blk.%d.%s_b" % (l, t)] = get("blk.%d.%s.bias" % (l, t))
    if "rope_freqs.weight" in tensors:
        w["rope_freqs"] = get("rope_freqs.weight")
    cfg["vocab"] = w["token_embd"].shape[0]
    _check_shapes(cfg, w)
    vocab = meta.get("tokenizer.ggml.tokens")
    return Model(cfg, w, vocab, int(meta.get("tokenizer.ggml.bos_token_id", 1)))


def load_llama2c(path):
    """A second loader: karpathy's llama2.c checkpoint (legacy version 0)."""
    with open(path, "rb") as f:
        data = f.read()
    dim, ffn, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", data[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    hd = dim // n_heads
    fl = np.frombuffer(data, dtype="<f4", offset=28).astype(np.float64)
    pos = [0]

    def take(*shape):
        n = int(np.prod(shape))
        if pos[0] + n > fl.size:
            raise ValueError("%s: truncated checkpoint" % path)
        a = fl[pos[0]:pos[0] + n].reshape(shape)
        pos[0] += n
        return a

    emb = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, n_heads * hd, dim)
    wk = take(n_layers, n_kv * hd, dim)
    wv = take(n_layers, n_kv * hd, dim)
    wo = take(n_layers, dim, n_heads * hd)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, ffn, dim)
    w2 = take(n_layers, dim, ffn)
    w3 = take(n_layers, ffn, dim)
    rms_final = take(dim)
    take(seq_len, hd // 2)  # freq_cis_real, unused
    take(seq_len, hd // 2)  # freq_cis_imag, unused
    out = emb if shared else take(vocab, dim)
    w = {"token_embd": emb, "output_norm": rms_final, "output": out}
    for l in range(n_layers):
        w.update({"blk.%d.attn_norm" % l: rms_att[l], "blk.%d.attn_q" % l: wq[l],
                  "blk.%d.attn_k" % l: wk[l], "blk.%d.attn_v" % l: wv[l],
                  "blk.%d.attn_output" % l: wo[l], "blk.%d.ffn_norm" % l: rms_ffn[l],
                  "blk.%d.ffn_gate" % l: w1[l], "blk.%d.ffn_down" % l: w2[l],
                  "blk.%d.ffn_up" % l: w3[l]})
    cfg = {"dim": dim, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv,
           "head_dim": hd, "ffn": ffn, "eps": 1e-5, "base": 10000.0, "n_rot": hd,
           "ctx": seq_len, "vocab": vocab, "neox": False, "scale": 1.0}
    _check_shapes(cfg, w)
    return Model(cfg, w)


def read_llama2c_vocab(path, vocab_size):
    """Token pieces (bytes) of a llama2.c tokenizer.bin."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 4  # max_token_length
    pieces = []
    for _ in range(vocab_size):
        _score, n = struct.unpack_from("<fi", data, pos)
        pos += 8
        pieces.append(data[pos:pos + n])
        pos += n
    return pieces


def _check_shapes(cfg, w):
    d, hd, ffn = cfg["dim"], cfg["head_dim"], cfg["ffn"]
    qd, kd = cfg["n_heads"] * hd, cfg["n_kv_heads"] * hd
    if cfg["n_heads"] % cfg["n_kv_heads"]:
        raise ValueError("n_heads %d is not a multiple of n_kv_heads %d"
                         % (cfg["n_heads"], cfg["n_kv_heads"]))
    want = {"token_embd": (cfg["vocab"], d), "output": (cfg["vocab"], d), "output_norm": (d,)}
    for l in range(cfg["n_layers"]):
        want.update({"blk.%d.attn_norm" % l: (d,), "blk.%d.attn_q" % l: (qd, d),
                     "blk.%d.attn_k" % l: (kd, d), "blk.%d.attn_v" % l: (kd, d),
                     "blk.%d.attn_output" % l: (d, qd), "blk.%d.ffn_norm" % l: (d,),
                     "blk.%d.ffn_gate" % l: (ffn, d), "blk.%d.ffn_down" % l: (d, ffn),
                     "blk.%d.ffn_up" % l: (ffn, d)})
        for t, n in (("attn_q", qd), ("attn_k", kd), ("attn_v", kd)):
            if "blk.%d.%s_b" % (l, t) in w:
                want["blk.%d.%s_b" % (l, t)] = (n,)
    if "rope_freqs" in w:
        want["rope_freqs"] = (cfg["n_rot"] // 2,)
    for k, shape in want.items():
        if w[k].shape != shape:
            raise ValueError("tensor %s has shape %s, expected %s" % (k, w[k].shape, shape))


def rmsnorm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x, pos, base, n_rot, neox=False, scale=1.0, factors=None):
    """x [n, heads, head_dim]; rotates pair i < n_rot/2 of every head by
    pos * scale * base^(-2i/n_rot) / factors[i]: pairs (2i, 2i+1), or
    (i, i + n_rot/2) when neox."""
    i = np.arange(n_rot // 2, dtype=np.float64)
    freq = scale * base ** (-2.0 * i / n_rot)
    if factors is not None:
        freq = freq / factors
    theta = pos[:, None].astype(np.float64) * freq  # [n, n_rot/2]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    out = x.copy()
    if neox:
        a, b = slice(0, n_rot // 2), slice(n_rot // 2, n_rot)
    else:
        a, b = slice(0, n_rot, 2), slice(1, n_rot, 2)
    x0, x1 = x[:, :, a], x[:, :, b]
    out[:, :, a] = x0 * cos - x1 * sin
    out[:, :, b] = x0 * sin + x1 * cos
    return out


def attention(q, k, v, heads=None, blend=1.0):
    """q [n, H, hd], k and v [n, KV, hd] -> [n, H*hd]; causal, grouped-query.

    heads: optional bool [H], the perturbed heads: their attention matrix
    becomes (1 - blend) * softmax + blend * identity, i.e. their output
    (1 - blend) * softmax(q k^T) v + blend * v[own position]."""
    n, n_heads, hd = q.shape
    group = n_heads // k.shape[1]
    k = np.repeat(k, group, axis=1)  # head h gets kv head h // group
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(hd)  # [H, n, n]
    scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    if heads is not None and np.any(heads):
        eye = np.eye(n)[None, :, :]
        p = np.where(np.asarray(heads, dtype=bool)[:, None, None],
                     (1.0 - blend) * p + blend * eye, p)
    return np.einsum("hij,jhd->ihd", p, v).reshape(n, n_heads * hd)


def head(model, x):
    """Output norm and head: logits [n, vocab] of residual streams x [n, dim]."""
    return rmsnorm(x, model.w["output_norm"], model.cfg["eps"]) @ model.w["output"].T


def margin(logits):
    """Top-1 minus top-2 probability of softmax, per row."""
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    top = np.sort(p, axis=-1)
    return top[:, -1] - top[:, -2]


def parse_heads(spec, n_layers, n_heads):
    """"L:H,L:H" -> bool mask [n_layers, n_heads]."""
    mask = np.zeros((n_layers, n_heads), dtype=bool)
    for item in spec.split(","):
        l, h = (int(t) for t in item.split(":"))
        mask[l, h] = True
    return mask


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(model, tokens, layers=None, hidden_in=None, perturb=None, blend=1.0,
            stop_layer=None, exit_layers=None, threshold=None, info=None):
    """Logits (or the residual stream) of tokens; see the module comment.

    perturb: bool [n_layers, n_heads] of perturbed heads (global layers),
    mixed with the identity by blend (attention() above).
    stop_layer: run layers [a, stop_layer) and apply the head (a draft pass).
    exit_layers, threshold: early exit; after each listed layer every row
    still running is tested: the head's top-1 minus top-2 probability >=
    threshold freezes its residual stream there (its logits are the head's
    at that point), and later layers compute its K and V from that frozen
    state.  info (a dict) receives "exited_at" (per row, global layer; the
    last layer run when it ran through) and "margins" (all tested margins)."""
    c, w = model.cfg, model.w
    a, b = layers if layers is not None else (0, c["n_layers"])
    if not 0 <= a < b <= c["n_layers"]:
        raise ValueError("bad layer range %d:%d for %d layers" % (a, b, c["n_layers"]))
    if stop_layer is not None:
        if b != c["n_layers"] or not a < stop_layer <= b:
            raise ValueError("stop_layer %d needs the head and a < stop <= %d" % (stop_layer, b))
        b_run = stop_layer
    else:
        b_run = b
    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(tokens)
    if a == 0:
        if tokens.min() < 0 or tokens.max() >= c["vocab"]:
            raise ValueError("token out of range")
        x = w["token_embd"][tokens].copy()
    else:
        if hidden_in is None:
            raise ValueError("layers %d:%d need a hidden-state input" % (a, b))
        x = np.asarray(hidden_in, dtype=np.float64).reshape(n, c["dim"]).copy()
    pos = np.arange(n)
    H, KV, hd = c["n_heads"], c["n_kv_heads"], c["head_dim"]
    active = np.ones(n, dtype=bool)
    exited_at = np.full(n, b_run - 1, dtype=np.int64)
    margins = []
    rope_kw = {"neox": c.get("neox", False), "scale": c.get("scale", 1.0),
               "factors": w.get("rope_freqs")}

    def proj(h, p, t):
        y = h @ w[p + t].T
        return y + w[p + t + "_b"] if p + t + "_b" in w else y

    for l in range(a, b_run):
        p = "blk.%d." % l
        # attention block (K and V of every row, frozen or not)
        h = rmsnorm(x, w[p + "attn_norm"], c["eps"])
        q = rope(proj(h, p, "attn_q").reshape(n, H, hd), pos, c["base"], c["n_rot"], **rope_kw)
        k = rope(proj(h, p, "attn_k").reshape(n, KV, hd), pos, c["base"], c["n_rot"], **rope_kw)
        v = proj(h, p, "attn_v").reshape(n, KV, hd)
        heads = perturb[l] if perturb is not None else None
        y = x + attention(q, k, v, heads, blend) @ w[p + "attn_output"].T
        # feed-forward block
        h = rmsnorm(y, w[p + "ffn_norm"], c["eps"])
        y = y + (silu(h @ w[p + "ffn_gate"].T) * (h @ w[p + "ffn_up"].T)) @ w[p + "ffn_down"].T
        x = np.where(active[:, None], y, x)  # stopped rows keep their exit state
        if exit_layers is not None and l in exit_layers and l + 1 < b_run and active.any():
            mg = margin(head(model, x[active]))
            margins.extend(mg.tolist())
            idx = np.nonzero(active)[0]
            stop = idx[mg >= threshold]
            active[stop] = False
            exited_at[stop] = l
    if info is not None:
        info["exited_at"] = exited_at
        info["margins"] = margins
    if b_run < c["n_layers"] and stop_layer is None:
        return x
    return head(model, x)


def piece_bytes(model, prev, tok):
    """Bytes a token prints as, the way llama2.c's run.c decodes."""
    piece = model.vocab[tok]
    if isinstance(piece, str):
        piece = piece.replace("\u2581", " ").encode("utf-8")
    if prev == model.bos and piece.startswith(b" "):
        piece = piece[1:]
    if len(piece) == 6 and piece.startswith(b"<0x") and piece.endswith(b">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    return piece


def greedy(model, n_steps):
    """Token ids: BOS then n_steps argmax picks (full recompute each step)."""
    toks = [model.bos]
    for _ in range(n_steps):
        toks.append(int(np.argmax(forward(model, toks)[-1])))
    return toks


def decode(model, toks):
    return b"".join(piece_bytes(model, p, t) for p, t in zip(toks[:-1], toks[1:]))


def _main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens")
    ap.add_argument("--layers")
    ap.add_argument("--hidden-in")
    ap.add_argument("--out")
    ap.add_argument("--generate", type=int)
    ap.add_argument("--perturb", help="heads L:H,... perturbed in every row")
    ap.add_argument("--blend", type=float, default=1.0)
    ap.add_argument("--stop-layer", type=int)
    args = ap.parse_args(argv[1:])
    model = load_gguf(args.model)
    if args.generate is not None:
        sys.stdout.buffer.write(decode(model, greedy(model, args.generate)) + b"\n")
        return 0
    if not args.tokens or not args.out:
        ap.error("--tokens and --out are required")
    tokens = [int(t) for t in args.tokens.split(",")]
    layers = None
    if args.layers:
        a, b = args.layers.split(":")
        layers = (int(a), int(b))
    hidden = None
    if args.hidden_in:
        hidden = np.fromfile(args.hidden_in, dtype="<f4")
        if hidden.size != len(tokens) * model.cfg["dim"]:
            ap.error("--hidden-in holds %d floats, expected %d x %d"
                     % (hidden.size, len(tokens), model.cfg["dim"]))
    mask = None
    if args.perturb:
        mask = parse_heads(args.perturb, model.cfg["n_layers"], model.cfg["n_heads"])
    y = forward(model, tokens, layers, hidden, perturb=mask, blend=args.blend,
                stop_layer=args.stop_layer)
    y.astype("<f4").tofile(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
