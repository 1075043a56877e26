"""Shared helpers for the script tests run by ctest.

Environment (set by tests/CMakeLists.txt and deploy/test.sh):
  ITT_BIN_DIR    built binaries
  ITT_TMP_DIR    scratch folder
  ITT_MODEL_DIR  the shared test models (tests needing one skip without it)
  ITT_DATA_DIR   the shared text data
Exit code 77 tells ctest the test was skipped.
"""
import os
import subprocess
import sys

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("ITT_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
BIN = os.environ.get("ITT_BIN_DIR", os.path.join(SOURCE, "build", "bin"))
TMP = os.environ.get("ITT_TMP_DIR", "/tmp")


def shared_dir(var, sub):
    d = os.environ.get(var)
    if d:
        return d
    d = os.path.join(SOURCE, "..", "shared", sub)
    return d if os.path.isdir(d) else None


MODELS = shared_dir("ITT_MODEL_DIR", "models")
DATA = shared_dir("ITT_DATA_DIR", "data")


def model(name):
    """Path of a shared model file, or None (with the reason printed)."""
    if not MODELS:
        print(f"SKIP: ITT_MODEL_DIR is not set; {name} is needed")
        return None
    p = os.path.join(MODELS, name)
    if not os.path.exists(p):
        print(f"SKIP: model file {p} is missing")
        return None
    return p


def tool(name):
    return os.path.join(BIN, name)


def require(model_name, binaries):
    """The path of a shared model; exits with SKIP (saying why) when the
    model or one of the built binaries is missing."""
    path = model(model_name)
    if path is None:
        sys.exit(SKIP)
    for b in binaries:
        if not os.access(tool(b), os.X_OK):
            print(f"SKIP: {tool(b)} is not built")
            sys.exit(SKIP)
    return path


def run(args, check=True, timeout=300, **kw):
    r = subprocess.run(args, capture_output=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {r.returncode}: "
                             f"{r.stderr.decode(errors='replace')[-2000:]}")
    return r


class Checks:
    """Collects named checks; prints one line each and a closing count."""

    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def check(self, name, fn):
        try:
            res = fn()
        except AssertionError as e:
            self.failed += 1
            print(f"FAIL {name}: {e}")
            return
        if res == SKIP:
            self.skipped += 1
            print(f"SKIP {name}")
        else:
            self.passed += 1
            print(f"ok   {name}")

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped")
        if self.failed:
            sys.exit(1)
        if self.passed == 0:
            sys.exit(SKIP)
        sys.exit(0)
