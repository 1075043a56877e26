#!/usr/bin/env python3
"""bench-pipeline: what pipeline stages, replicas and the coordinator cost.

Measures, with real itt-broker / itt-worker / itt-coordinator processes on
this machine (loopback):

1. Per-hop overhead: one greedy stream, time per output token (median) of
   the whole model on one worker with 1 thread, against 2 and 3 stages of 1
   thread each (the stages run one after another for one stream, so the
   difference is what each hop adds: a RESULT and a STEP through the broker
   with the activations), and one worker with 2 threads (the same total
   threads as 2 stages).  All four run at once under one broker and the
   requests alternate between them (ITT_BENCH_ROUNDS rounds, default 8), so
   the machine's drift does not land on one configuration.
   overhead per hop = (TPOT(k stages) - TPOT(1 stage, 1 thread)) / (k - 1).
2. Replicas: aggregate tokens/s with C clients of one worker (1 thread)
   against two replicas (1 thread each) and one worker with 2 threads.
3. Rebalance (stories260K, coordinator with --stages 2): seconds from a
   worker's start (join) or kill (leave) until the broker's routes are the
   coordinator's again with every worker in them and none loading.

Prints tables and writes one JSON object per measurement to OUT (JSON
lines).  The machine (CPU, cores), threads and model are printed beside the
figures; the roofline for (1) is the 1-stage time itself (a hop cannot cost
less than nothing), and the weight bytes streamed per token give the
implied memory bandwidth of each configuration.

usage: bench-pipeline.py BUILD_DIR [OUT.jsonl] [--model PATH] [--synth]
  --model PATH  GGUF for (1) and (2) (default: stories260K from ITT_MODEL_DIR)
  --synth       also run (1) and (2) on a synthetic 134M F32 model (dim 768,
                12 layers, vocab 32000) written to a temporary folder
Environment: ITT_BENCH_DURATION (8 s measured per run), ITT_BENCH_CLIENTS (8,
for replicas), ITT_MODEL_DIR (default ../shared/models beside the source).
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))


def usage(rc):
    print(__doc__.split("usage:")[1].strip() if rc else __doc__, file=sys.stderr if rc else sys.stdout)
    sys.exit(rc)


def parse():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        usage(0 if args else 2)
    build = os.path.abspath(args.pop(0))
    out, model, synth = "bench-pipeline.jsonl", None, False
    while args:
        a = args.pop(0)
        if a == "--model" and args:
            model = os.path.abspath(args.pop(0))
        elif a == "--synth":
            synth = True
        elif not a.startswith("-"):
            out = a
        else:
            print(f"bench-pipeline: unknown argument {a}", file=sys.stderr)
            usage(2)
    if not os.path.isdir(os.path.join(build, "bin")):
        print(f"bench-pipeline: {build}/bin: no such folder (give a build dir)", file=sys.stderr)
        sys.exit(2)
    return build, out, model, synth


BUILD, OUT, MODEL, SYNTH = parse()
os.environ.setdefault("ITT_BIN_DIR", os.path.join(BUILD, "bin"))
os.environ.setdefault("ITT_PY_DIR", os.path.join(BUILD, "python"))
os.environ.setdefault("ITT_SOURCE_DIR", SOURCE)
os.environ.setdefault("ITT_TMP_DIR", tempfile.gettempdir())
if "ITT_MODEL_DIR" not in os.environ and os.path.isdir(os.path.join(SOURCE, "..", "shared",
                                                                     "models")):
    os.environ["ITT_MODEL_DIR"] = os.path.join(SOURCE, "..", "shared", "models")
sys.path.insert(0, os.path.join(SOURCE, "tests", "integration"))
import itt_test  # noqa: E402
from cluster import Cluster  # noqa: E402

DURATION = float(os.environ.get("ITT_BENCH_DURATION", "8"))
CLIENTS = int(os.environ.get("ITT_BENCH_CLIENTS", "8"))
ITT = itt_test.tool("itt")
records = []


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count()}


def n_layers_of(path):
    """llama.block_count, read by the Python GGUF reader of tests/ref (it
    reads the whole file: fine for the sizes benchmarked here)."""
    sys.path.insert(0, os.path.join(SOURCE, "tests", "ref"))
    import gguf_read  # noqa: E402
    meta = gguf_read.read_gguf(path)[0]
    return int(meta["llama.block_count"])


def serve(c, clients, gen=64):
    r = subprocess.run([ITT, "bench", "serve", "--broker", c.front, "--model", c.name,
                        "--clients", str(clients), "--duration", str(DURATION), "--warmup",
                        "2", "--gen-tokens", str(gen), "--temperature", "0", "--json"],
                       capture_output=True, text=True, timeout=DURATION + 120)
    if r.returncode != 0:
        raise RuntimeError(f"itt bench serve failed: {r.stderr[-500:]}")
    return json.loads(r.stdout)


HOP_CONFIGS = ((1, 1), (2, 1), (3, 1), (1, 2))  # (stages, threads per stage)
HOP_ROUNDS = int(os.environ.get("ITT_BENCH_ROUNDS", "8"))


def hops(path, label, n_gen=64):
    """All four configurations at once under one broker, each its own service
    name; single greedy streams alternate between them round by round, so
    drift of the shared machine hits every configuration alike (medians of
    the per-request TPOT)."""
    import itt_client  # noqa: E402 (cluster.py put client/python on the path)
    size = os.path.getsize(path)
    n = n_layers_of(path)
    c = Cluster(path, workers=0, broker_args=["--log-level", "warn"])
    tpots = {cfg: [] for cfg in HOP_CONFIGS}
    try:
        names = {}
        for stages, threads in HOP_CONFIGS:
            name = f"s{stages}t{threads}"
            names[(stages, threads)] = name
            cuts = [round(i * n / stages) for i in range(stages + 1)]
            for a, b in zip(cuts, cuts[1:]):
                c.add_worker(["--layers", f"{a}:{b}", "--name", name, "--threads",
                              str(threads), "--log-level", "warn"], wait=False)
        c.wait_workers(sum(st for st, _ in HOP_CONFIGS), 120)
        cl = itt_client.Client(c.front, client_id=f"bench-hops-{os.getpid()}")
        try:
            for rnd in range(HOP_ROUNDS + 1):
                for cfg in HOP_CONFIGS:
                    r = cl.generate_text(names[cfg], "Once upon a time", max_tokens=n_gen,
                                         temperature=0.0, deadline_ms=600000)
                    t = r.timings
                    if rnd and r.n_tokens > 1:  # round 0 warms up
                        tpots[cfg].append((t["total_ms"] - t["first_token_ms"])
                                          / (r.n_tokens - 1))
        finally:
            cl.close()
    finally:
        c.stop()
    base = statistics.median(tpots[(1, 1)])
    print(f"\n(1) per-hop overhead, one greedy stream ({n_gen} tokens), {label} "
          f"({size / 1e6:.1f} MB of weights), medians of {HOP_ROUNDS} interleaved rounds")
    print(f"{'stages':>6} {'threads/stage':>13} {'TPOT p50 ms':>12} {'tok/s':>8} "
          f"{'GB/s implied':>12} {'per hop ms':>10}")
    for stages, threads in HOP_CONFIGS:
        tpot = statistics.median(tpots[(stages, threads)])
        hop = (tpot - base) / (stages - 1) if stages > 1 else None
        gbs = size / (tpot / 1e3) / 1e9 if tpot > 0 else 0
        print(f"{stages:>6} {threads:>13} {tpot:>12.3f} {1e3 / tpot:>8.1f} {gbs:>12.2f} "
              f"{'-' if hop is None else f'{hop:.3f}':>10}")
        records.append({"bench": "pipeline-hop", "model": label, "stages": stages,
                        "threads_per_stage": threads, "tpot_p50_ms": tpot,
                        "tpot_ms": tpots[(stages, threads)], "overhead_per_hop_ms": hop,
                        "weight_bytes": size, "machine": machine()})


def replicas(path, label):
    rows = []
    for workers, threads in ((1, 1), (2, 1), (1, 2)):
        c = Cluster(path, workers=workers, threads=threads,
                    broker_args=["--log-level", "warn"], worker_args=["--log-level", "warn"],
                    ready_timeout=120)
        try:
            d = serve(c, CLIENTS)
        finally:
            c.stop()
        rows.append((workers, threads, d["tokens_per_s"], d["tpot_ms"]["p50"],
                     d["errors_total"]))
    base = rows[0][2]
    print(f"\n(2) replicas, {CLIENTS} clients, {label}")
    print(f"{'replicas':>8} {'threads each':>12} {'tok/s':>9} {'x 1 replica':>11} "
          f"{'TPOT p50 ms':>11} {'errors':>6}")
    for workers, threads, tps, tpot, errs in rows:
        print(f"{workers:>8} {threads:>12} {tps:>9.1f} {tps / base:>11.2f} {tpot:>11.3f} "
              f"{errs:>6}")
        records.append({"bench": "pipeline-replicas", "model": label, "replicas": workers,
                        "threads_each": threads, "clients": CLIENTS, "tokens_per_s": tps,
                        "ratio": tps / base, "tpot_p50_ms": tpot, "errors": errs,
                        "machine": machine()})


def wait_routes(c, stages, n_workers, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = c.stats()
        rs = list(st.routes)
        used = {w for r in rs for w in r.worker_ids}
        if (rs and all(r.source == "coordinator" and len(r.worker_ids) == stages for r in rs)
                and len(used) == n_workers and all(w.state != "loading" for w in st.workers
                                                    if w.state != "lost")):
            return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"routes of {stages} stages over {n_workers} workers not within "
                       f"{timeout} s")


def rebalance(path, label, rounds=3):
    joins, leaves = [], []
    c = Cluster(path, workers=2, threads=1, broker_args=["--log-level", "warn"])
    try:
        c.start_coordinator(["--stages", "2", "--log-level", "warn"])
        wait_routes(c, 2, 2)
        for _ in range(rounds):
            t0 = time.monotonic()
            i = c.add_worker(["--log-level", "warn"], wait=False)
            joins.append(wait_routes(c, 3, 3) - t0)
            t0 = time.monotonic()
            c.kill_worker(i)
            leaves.append(wait_routes(c, 2, 2) - t0)
    finally:
        c.stop()
    print(f"\n(3) rebalance with itt-coordinator (--stages 2), {label}, {rounds} rounds")
    print(f"{'event':>6} {'median s':>9} {'max s':>7}   (from the worker's start / kill to "
          f"usable coordinator routes)")
    for name, xs in (("join", joins), ("leave", leaves)):
        print(f"{name:>6} {statistics.median(xs):>9.2f} {max(xs):>7.2f}")
        records.append({"bench": "pipeline-rebalance", "model": label, "event": name,
                        "seconds": xs, "median_s": statistics.median(xs),
                        "machine": machine()})


def main():
    m = MODEL or itt_test.model("stories260K.gguf")
    if not m:
        print("bench-pipeline: no model (set ITT_MODEL_DIR or --model)", file=sys.stderr)
        sys.exit(2)
    mc = machine()
    print(f"machine: {mc['cpu']}, {mc['cores']} cores; loopback; {DURATION:g} s measured "
          f"per run")
    label = os.path.basename(m)
    hops(m, label)
    replicas(m, label)
    if SYNTH:
        tmp = tempfile.mkdtemp(prefix="itt-bench-pipeline-")
        try:
            p = os.path.join(tmp, "synth134M.gguf")
            subprocess.run([itt_test.tool("itt-synth"), p, "--dim", "768", "--layers", "12",
                            "--ffn", "2048", "--vocab", "32000"], check=True,
                           capture_output=True, timeout=600)
            hops(p, "synthetic 134M F32")
            replicas(p, "synthetic 134M F32")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    rebalance(itt_test.model("stories260K.gguf") or m, "stories260K")
    with open(OUT, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    print(f"\n{len(records)} JSON lines appended to {OUT}")


if __name__ == "__main__":
    main()
