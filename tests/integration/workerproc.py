"""itt-worker processes of one test driven by fakebroker.py: each started
with its own log file, stopped by SIGTERM (SIGKILL after 5 s), and the exit
statuses kept so a test can require that every worker left cleanly."""
import os
import subprocess

from itt_test import TMP, tool


class Workers:
    def __init__(self, test):
        self.test = test
        self.procs = []
        self.exit_codes = []

    def start(self, model, endpoint, name, *extra):
        """Starts a worker for `model` against `endpoint`; returns (process, log path)."""
        log_path = os.path.join(TMP, f"{self.test}-{name}.log")
        with open(log_path, "wb") as log:
            p = subprocess.Popen([tool("itt-worker"), "--model", model, "--broker", endpoint,
                                  "--log-level", "info", *map(str, extra)],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.procs.append(p)
        return p, log_path

    def stop(self, p):
        """SIGTERM (the clean way out), then SIGKILL after 5 s; records the status."""
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.exit_codes.append(p.returncode)
        return p.returncode

    def stop_all(self):
        for p in self.procs:
            self.stop(p)

    def check_exits(self):
        assert self.exit_codes, "no worker was stopped"
        assert all(c == 0 for c in self.exit_codes), \
            f"exit statuses after SIGTERM: {self.exit_codes}"
        print(f"     {len(self.exit_codes)} workers stopped by SIGTERM, all with status 0")
