"""cluster: start a real itt-broker and N itt-worker processes on free loopback
ports for a test, and stop them.

    from cluster import Cluster
    with Cluster(model_path, workers=2) as c:      # waits until both registered
        run([itt, "generate", "--broker", c.front, "--model", c.name, ...])
        c.kill_worker(0)                           # SIGKILL by default
        c.stats()                                  # ClusterStats (itt_pb2)

Contract:
- Ports are picked by binding port 0 on 127.0.0.1 and released just before
  the broker binds them; if the broker dies at start (port taken meanwhile)
  start() tries again with new ports, up to 3 times.
- restart_broker() replaces the broker by a new process on the same
  endpoints (the workers reconnect by themselves).
- Workers get ids "w0", "w1", ... (--id), so stats rows map to processes.
- Every process writes stdout+stderr to ITT_TMP_DIR/<tag>-<name>.log;
  log_tail() returns the end of one for failure messages.
- stop() (also on leaving the `with` block, and at interpreter exit) sends
  SIGTERM to every child still running, SIGKILL after 5 s, and reaps them:
  no process outlives the test.
- start_coordinator() runs itt-coordinator against the broker; it is
  stopped with the rest.
- api_key starts the broker with --api-key KEY (and the probe uses it).
- Readiness is asked of the broker with STATS through the Python client
  (client/python/itt_client.py); the message classes come from ITT_PY_DIR.
"""
import atexit
import os
import signal
import socket
import subprocess
import sys
import time

import itt_test

sys.path.insert(0, os.path.join(itt_test.SOURCE, "client", "python"))
import itt_client  # noqa: E402

_live = []


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, model, workers=1, name=None, worker_args=(), broker_args=(),
                 threads=1, tag=None, start=True, ready_timeout=30.0, api_key=None):
        self.model = model
        self.name = name or os.path.splitext(os.path.basename(model))[0]
        self.n_workers = workers
        self.worker_args = list(worker_args)
        self.broker_args = list(broker_args) + (["--api-key", api_key] if api_key else [])
        self.api_key = api_key
        self.threads = threads
        self.tag = tag or f"cluster-{os.getpid()}-{int(time.time() * 1000) % 100000}"
        self.ready_timeout = ready_timeout
        self.broker = None
        self.coordinator = None
        self.workers = []  # Popen per worker index (None once removed)
        self.front = self.back = None
        self._logs = {}
        self._broker_label = "broker"
        self._client = None
        _live.append(self)
        if start:
            self.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- processes --
    def _spawn(self, label, args):
        path = os.path.join(itt_test.TMP, f"{self.tag}-{label}.log")
        log = open(path, "wb")
        self._logs[label] = path
        try:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def log_tail(self, label, n=2000):
        """The last n bytes of a process's log ("broker", "w0", ...)."""
        try:
            with open(self._logs[label], "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except (KeyError, OSError):
            return ""

    def _start_broker(self, label="broker"):
        self.broker = self._spawn(label, [itt_test.tool("itt-broker"), "--front", self.front,
                                          "--back", self.back] + self.broker_args)
        self._broker_label = label
        time.sleep(0.2)
        return self.broker.poll() is None

    def start(self):
        for attempt in range(3):
            self.front = f"tcp://127.0.0.1:{free_port()}"
            self.back = f"tcp://127.0.0.1:{free_port()}"
            if self._start_broker():
                break
        else:
            raise RuntimeError("itt-broker does not start: " + self.log_tail("broker"))
        for _ in range(self.n_workers):
            self.add_worker(wait=False)
        self.wait_workers(self.n_workers, self.ready_timeout)
        return self

    def add_worker(self, extra_args=(), wait=True):
        """Starts one more worker (id "w<index>"); returns its index."""
        i = len(self.workers)
        args = [itt_test.tool("itt-worker"), "--broker", self.back, "--model", self.model,
                "--name", self.name, "--id", f"w{i}", "--threads", str(self.threads)]
        self.workers.append(self._spawn(f"w{i}", args + self.worker_args + list(extra_args)))
        if wait:
            self.wait_workers(self.live_workers(), self.ready_timeout)
        return i

    def restart_broker(self, sig=signal.SIGKILL, wait=True):
        """Kills the broker and starts a new one on the same endpoints (its log
        is "broker-<n>"); with wait, returns once the live workers have
        registered with it again."""
        old = self.broker
        if old.poll() is None:
            old.send_signal(sig)
            old.wait(timeout=10)
        n = sum(1 for k in self._logs if k.startswith("broker"))
        if not self._start_broker(f"broker-{n}"):
            raise RuntimeError("the restarted itt-broker exited: "
                               + self.log_tail(self._broker_label))
        if self._client is not None:  # its connection is to the old process
            self._client.close()
            self._client = None
        if wait:
            self.wait_workers(self.live_workers(), self.ready_timeout)

    def start_coordinator(self, args=()):
        """Starts itt-coordinator against the broker (log "coordinator-<n>")."""
        n = sum(1 for k in self._logs if k.startswith("coordinator"))
        self.coordinator = self._spawn(f"coordinator-{n}", [
            itt_test.tool("itt-coordinator"), "--broker", self.back] + list(args))
        return self.coordinator

    def kill_coordinator(self, sig=signal.SIGKILL):
        p = self.coordinator
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            p.wait(timeout=10)

    def live_workers(self):
        return sum(1 for p in self.workers if p is not None and p.poll() is None)

    def kill_worker(self, i, sig=signal.SIGKILL):
        p = self.workers[i]
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def worker_index(self, worker_id):
        """Index of the worker whose stats id is worker_id ("w3" -> 3), or None."""
        if worker_id.startswith("w") and worker_id[1:].isdigit():
            i = int(worker_id[1:])
            return i if i < len(self.workers) else None
        return None

    # -- broker queries --
    def client(self):
        if self._client is None:
            self._client = itt_client.Client(self.front, client_id=f"{self.tag}-probe",
                                             api_key=self.api_key)
        return self._client

    def stats(self, timeout=5.0):
        return self.client().stats(timeout_s=timeout)

    def wait_workers(self, n, timeout=30.0):
        """Waits until the broker lists n workers that are not "lost"."""
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            if self.broker.poll() is not None:
                raise RuntimeError(f"itt-broker exited ({self.broker.returncode}): "
                                   + self.log_tail(self._broker_label))
            for i, p in enumerate(self.workers):
                if p is not None and p.poll() is not None and p.returncode not in (
                        -signal.SIGKILL, -signal.SIGTERM):
                    raise RuntimeError(f"itt-worker w{i} exited ({p.returncode}): "
                                       + self.log_tail(f"w{i}"))
            try:
                st = self.stats(timeout=1.0)
                last = [(w.id, w.state) for w in st.workers]
                if sum(1 for w in st.workers if w.state != "lost") >= n:
                    return st
            except itt_client.IttError as e:
                last = str(e)
            time.sleep(0.1)
        raise RuntimeError(f"{n} workers did not register within {timeout} s (last: {last});"
                           f" broker log: {self.log_tail(self._broker_label)}")

    def stop(self):
        if self._client is not None:
            self._client.close()
            self._client = None
        procs = [p for p in self.workers + [self.coordinator, self.broker] if p is not None]
        if self.broker is not None and self.broker.poll() is None:
            self.broker.send_signal(signal.SIGCONT)  # in case a test stopped it
        for p in procs:
            if p.poll() is None:
                p.terminate()
        end = time.monotonic() + 5
        for p in procs:
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self in _live:
            _live.remove(self)


@atexit.register
def _stop_all():
    for c in list(_live):
        c.stop()
