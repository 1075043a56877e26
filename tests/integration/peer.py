"""peer: llama.cpp as an independent second implementation, for tests.

The peer is a llama.cpp build found under $ITT_PEER_DIR (default
${TMPDIR:-/tmp}/itt-peer), binaries in llama.cpp/build/bin (llama-server,
llama-cli, llama-simple, ...).  Tests that need it call require_peer(),
which exits with 77 ("SKIP: <why>") when it is not there.

Our side: itt_greedy runs `itt generate --local` (greedy, --json);
itt_logits runs tests/tools' itt-dump-logits over given token ids.

Peer side: a LlamaServer (context manager) runs llama-server on a free
local port; completion() posts to /completion with temperature 0 and
"return_tokens", optionally n_probs (top log-probabilities of the full
softmax at every generated position; greedy_probs lines them up with
the tokens, given the vocabulary's pieces from gguf_pieces, since the
server leaves out positions whose text ends in a partial UTF-8
character).  llama_greedy(model, prompt, n) is the one-shot form.  A
prompt is text (tokenized by the peer, BOS added as the model says) or a
list of token ids (used as given, nothing added).  For logits that agree
with ours to ~1e-5, run the server with extra=["-ctk", "f32", "-ctv",
"f32", "-fa", "off"] (its CPU flash attention rounds through F16).
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import itt_test  # noqa: E402

SKIP = 77


def skip(why):
    """Prints "SKIP: why" and exits with ctest's skip code."""
    print("SKIP: %s" % why, flush=True)
    sys.exit(SKIP)


def peer_dir():
    d = os.environ.get("ITT_PEER_DIR")
    if d:
        return d
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", "itt-peer")


def peer_bin(name):
    return os.path.join(peer_dir(), "llama.cpp", "build", "bin", name)


def peer_missing(binaries=("llama-server",)):
    """Why the peer cannot be used, or None."""
    for b in binaries:
        p = peer_bin(b)
        if not os.access(p, os.X_OK):
            return "llama.cpp peer %s not found (set ITT_PEER_DIR; looked in %s)" % (
                b, peer_dir())
    return None


def require_peer(binaries=("llama-server",)):
    why = peer_missing(binaries)
    if why:
        skip(why)


def require_itt(binaries=("itt",)):
    for b in binaries:
        if not os.access(itt_test.tool(b), os.X_OK):
            skip("%s is not built" % itt_test.tool(b))


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """llama-server on one model; use as `with LlamaServer(path) as srv:`."""

    def __init__(self, model_path, ctx=512, threads=1, timeout=60.0, extra=()):
        self.model_path = model_path
        self.ctx, self.threads, self.timeout = ctx, threads, timeout
        self.extra = list(extra)
        self.proc = None
        self.port = None
        self.log_path = None

    def start(self):
        why = peer_missing()
        if why:
            raise RuntimeError(why)
        for _attempt in range(3):
            self.port = _free_port()
            self.log_path = os.path.join(itt_test.TMP, "llama-server-%d-%d.log" % (
                os.getpid(), self.port))
            log = open(self.log_path, "wb")
            cmd = [peer_bin("llama-server"), "-m", self.model_path, "--host", "127.0.0.1",
                   "--port", str(self.port), "-c", str(self.ctx), "-t", str(self.threads),
                   "-np", "1", "--no-warmup", "--no-webui"] + self.extra
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
            log.close()
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError("llama-server did not come up on %s: %s" % (
            self.model_path, self.log_tail()))

    def _wait_ready(self):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/health" % self.port,
                                            timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        return False

    def log_tail(self, n=5):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").strip().splitlines()
            return " | ".join(lines[-n:])
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def post(self, path, body, timeout=120):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path),
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read().decode())

    def completion(self, prompt, n_tokens, n_probs=0, ignore_eos=False):
        """Greedy continuation: the raw /completion answer (its "tokens" are
        the generated ids; with n_probs, "completion_probabilities" holds the
        top log-probabilities at each generated position)."""
        body = {"prompt": prompt, "n_predict": n_tokens, "temperature": 0.0, "top_k": 1,
                "return_tokens": True, "cache_prompt": False, "ignore_eos": ignore_eos,
                "samplers": ["top_k"], "seed": 0}
        if n_probs:
            body["n_probs"] = n_probs
        return self.post("/completion", body)

    def greedy(self, prompt, n_tokens, ignore_eos=False):
        return [int(t) for t in self.completion(prompt, n_tokens, 0, ignore_eos)["tokens"]]

    def greedy_probs(self, prompt, n_tokens, n_probs=8, ignore_eos=False, pieces=None):
        """(ids, tops): tops[i] is {token id: log-probability} of the n_probs
        most likely tokens at generated position i (full-softmax log-probs),
        or None where the server gave none."""
        d = self.completion(prompt, n_tokens, n_probs, ignore_eos)
        ids = [int(t) for t in d["tokens"]]
        probs = d.get("completion_probabilities", [])
        # The server leaves out the positions after which the text so far
        # ends in an incomplete UTF-8 sequence (e.g. a lone <0xD2> byte
        # token): with the pieces (gguf_pieces) those are known; without,
        # the entries are matched to the tokens in order by id, which can
        # misplace one when an id repeats.
        text, has = b"", []
        for t in ids:
            if pieces is None:
                has.append(None)
                continue
            text += pieces[t]
            has.append(_utf8_complete_len(text) == len(text))
        tops, k = [], 0
        for t, h in zip(ids, has):
            if h is None:
                h = k < len(probs) and int(probs[k]["id"]) == t
            if h:
                if k >= len(probs) or int(probs[k]["id"]) != t:
                    raise RuntimeError("llama-server probabilities do not line up with tokens")
                tops.append({int(x["id"]): float(x["logprob"]) for x in probs[k]["top_logprobs"]})
                k += 1
            else:
                tops.append(None)
        if k != len(probs):
            raise RuntimeError("llama-server probabilities do not line up with its tokens")
        return ids, tops

    def tokenize(self, text, add_special=True):
        return [int(t) for t in self.post("/tokenize", {"content": text,
                                                        "add_special": add_special})["tokens"]]


def _utf8_complete_len(text):
    """llama-server's validate_utf8: the length without a multi-byte
    character cut off at the end."""
    n = len(text)
    for i in range(1, min(4, n) + 1):
        c = text[n - i]
        if (c & 0xE0) == 0xC0 and i < 2 or (c & 0xF0) == 0xE0 and i < 3 or \
                (c & 0xF8) == 0xF0 and i < 4:
            return n - i
    return n


def gguf_pieces(model_path):
    """The bytes each token id prints as in llama.cpp's generated text
    (SentencePiece-style vocabularies: U+2581 is a space, <0xXX> a byte,
    control tokens nothing)."""
    sys.path.insert(0, os.path.join(HERE, "..", "ref"))
    import gguf_read
    meta, _ = gguf_read.read_gguf(model_path)
    toks = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type", [1] * len(toks))
    out = []
    for t, ty in zip(toks, types):
        if isinstance(t, bytes):
            t = t.decode("utf-8", "replace")
        if ty == 6 and len(t) == 6 and t.startswith("<0x"):  # byte
            out.append(bytes([int(t[3:5], 16)]))
        elif ty in (2, 3, 5):  # unknown, control, unused
            out.append(b"")
        else:
            out.append(t.replace("\u2581", " ").encode("utf-8"))
    return out


def llama_greedy(model_path, prompt, n_tokens, ignore_eos=False):
    """llama.cpp's greedy token ids after prompt (text or ids); starts and
    stops a server (use LlamaServer directly for several prompts)."""
    with LlamaServer(model_path) as srv:
        return srv.greedy(prompt, n_tokens, ignore_eos)


def itt_greedy(model_path, prompt_text, n_tokens, threads=1, extra=()):
    """Our greedy token ids (`itt generate --local --json --temperature 0`
    plus extra arguments); generation stops at end-of-sequence like
    llama.cpp's."""
    r = itt_test.run([itt_test.tool("itt"), "generate", "--local", model_path, "-p", prompt_text,
                      "-n", str(n_tokens), "--temperature", "0", "--json", "-t", str(threads)]
                     + list(extra), timeout=120)
    return [int(t) for t in json.loads(r.stdout.decode())["tokens"]]


def itt_prompt_tokens(model_path, prompt_text):
    """Our tokenization of prompt_text (BOS included), via itt generate -n 0."""
    r = itt_test.run([itt_test.tool("itt"), "generate", "--local", model_path, "-p", prompt_text,
                      "-n", "0", "--temperature", "0", "--json"], timeout=120)
    return [int(t) for t in json.loads(r.stdout.decode())["prompt_tokens"]]


def itt_logits(model_path, tokens, layers=None, extra=()):
    """Our logits [len(tokens)][vocab] (numpy float32) from itt-dump-logits
    (plus extra arguments)."""
    import numpy as np
    out = os.path.join(itt_test.TMP, "peer-logits-%d.f32" % os.getpid())
    args = [itt_test.tool("itt-dump-logits"), model_path, "--tokens",
            ",".join(map(str, tokens)), "--out", out]
    if layers:
        args += ["--layers", "%d:%d" % layers]
    itt_test.run(args + list(extra), timeout=120)
    y = np.fromfile(out, dtype="<f4")
    os.unlink(out)
    return y.reshape(len(tokens), -1)
