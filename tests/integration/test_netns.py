"""The cluster across hosts: network namespaces made by deploy/netns.sh as
four machines on a private test link (10.213.0.0/24, inside the namespaces
only).  Host 0 runs the broker, hosts 1-3 a worker each, and clients on other
hosts than the broker's stream through it.  Then hosts 1-3 get one more
worker each, the coordinator on host 0 makes them a 3-stage pipeline, and a
client streams through it.

Needs root, iproute2 and stories260K; otherwise it says why and skips.
"""
import json
import os
import shutil
import signal
import subprocess
import time

from itt_test import Checks, SKIP, SOURCE, TMP, model, run, tool

NETNS = os.path.join(SOURCE, "deploy", "netns.sh")
PREFIX = f"itt{os.getpid() % 100000}"
BROKER_IP = "10.213.0.1"
FRONT, BACK = f"tcp://{BROKER_IP}:5555", f"tcp://{BROKER_IP}:5556"


def netns(*args, check=True):
    return run(["bash", NETNS] + [str(a) for a in args], check=check, timeout=60)


def on_host(i, args, **kw):
    return ["ip", "netns", "exec", f"{PREFIX}-h{i}"] + args


def main():
    m = model("stories260K.gguf")
    if not m:
        return SKIP
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("SKIP: the netns harness needs root and iproute2 (ip)")
        return SKIP
    try:
        netns("up", PREFIX, 4)
    except AssertionError as e:
        print(f"SKIP: cannot make network namespaces here: {e}")
        netns("down", PREFIX, check=False)
        return SKIP
    procs = []
    c = Checks()
    try:
        logs = [open(os.path.join(TMP, f"netns-{PREFIX}-{i}.log"), "wb") for i in range(4)]
        procs.append(subprocess.Popen(on_host(0, [tool("itt-broker"), "--front", FRONT,
                                                  "--back", BACK]),
                                      stdout=logs[0], stderr=subprocess.STDOUT))
        for i in (1, 2, 3):
            procs.append(subprocess.Popen(on_host(i, [tool("itt-worker"), "--broker", BACK,
                                                      "--model", m, "--id", f"host{i}"]),
                                          stdout=logs[i], stderr=subprocess.STDOUT))

        def registered():
            deadline = time.time() + 20
            while time.time() < deadline:
                r = run(on_host(3, [tool("itt"), "stats", "--broker", FRONT, "--json"]),
                        check=False, timeout=20)
                if r.returncode == 0:
                    ids = sorted(w["id"] for w in json.loads(r.stdout)["workers"])
                    if ids == ["host1", "host2", "host3"]:
                        return
                time.sleep(0.3)
            raise AssertionError("the three workers did not register across the link")

        c.check("three worker hosts register with the broker host", registered)

        local = json.loads(run([tool("itt"), "generate", "--local", m, "--prompt",
                                "Once upon a time", "--temperature", "0", "-n", "64",
                                "--json"]).stdout)

        def generate_across():
            r = run(on_host(2, [tool("itt"), "generate", "--broker", FRONT, "--model",
                                "stories260K", "--prompt", "Once upon a time",
                                "--temperature", "0", "-n", "64", "--json"]))
            d = json.loads(r.stdout)
            assert d["tokens"] == local["tokens"], "tokens differ from --local"

        c.check("a client on host 2 streams greedy text equal to --local", generate_across)

        def survive_worker_host_loss():
            # a long stream from host 1; the worker host serving it loses its process
            p = subprocess.Popen(on_host(1, [tool("itt"), "generate", "--broker", FRONT,
                                             "--model", "stories260K", "--prompt", "Once",
                                             "--temperature", "0", "-n", "600", "--json"]),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(0.05)
            procs[1].send_signal(signal.SIGKILL)  # worker on host 1 (maybe not the server)
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode(errors="replace")[-500:]
            ref = json.loads(run([tool("itt"), "generate", "--local", m, "--prompt", "Once",
                                  "--temperature", "0", "-n", "600", "--json"]).stdout)
            assert json.loads(out)["tokens"] == ref["tokens"], "stream differs after the loss"

        c.check("a worker host dies during a stream: it completes identically",
                survive_worker_host_loss)

        def pipeline_across_hosts():
            # three more workers, one per host, under another service name; the
            # coordinator on the broker host makes them one 3-stage route
            for i in (1, 2, 3):
                procs.append(subprocess.Popen(on_host(i, [
                    tool("itt-worker"), "--broker", BACK, "--model", m, "--name", "pipe",
                    "--id", f"pipe{i}"]), stdout=logs[i], stderr=subprocess.STDOUT))
            procs.append(subprocess.Popen(on_host(0, [tool("itt-coordinator"), "--broker", BACK,
                                                      "--stages", "3"]),
                                          stdout=logs[0], stderr=subprocess.STDOUT))
            deadline = time.time() + 30
            routes = None
            while time.time() < deadline:
                r = run(on_host(2, [tool("itt"), "stats", "--broker", FRONT, "--json"]),
                        check=False, timeout=20)
                if r.returncode == 0:
                    st = json.loads(r.stdout)
                    routes = [x for x in st.get("routes", []) if x["model"] == "pipe"]
                    loading = [w for w in st["workers"] if w["state"] == "loading"]
                    if (len(routes) == 1 and len(routes[0]["worker_ids"]) == 3
                            and routes[0]["source"] == "coordinator" and not loading):
                        break
                time.sleep(0.3)
            else:
                raise AssertionError(f"no 3-stage route of the coordinator: {routes}")
            r = run(on_host(1, [tool("itt"), "generate", "--broker", FRONT, "--model", "pipe",
                                "--prompt", "Once upon a time", "--temperature", "0", "-n",
                                "64", "--json"]))
            assert json.loads(r.stdout)["tokens"] == local["tokens"], "tokens differ"

        c.check("a 3-stage pipeline over three worker hosts (placed by the coordinator) "
                "streams tokens equal to --local", pipeline_across_hosts)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        netns("down", PREFIX, check=False)
    c.finish()


if __name__ == "__main__":
    if main() == SKIP:
        raise SystemExit(SKIP)
