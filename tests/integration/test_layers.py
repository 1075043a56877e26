"""test_layers: the layers of ARCHITECTURE.md point down only.

Every `#include "x.h"` of a C file under broker/, client/, cluster/, proto/
and worker/ is resolved to the folder that holds x.h, and that folder must
be one the including file's layer may use:

  base        proto/base/            base
  proto       proto/                 base, proto (and the generated itt.pb-c.h)
  engine      worker/engine/         base, engine
  libitt      client/libitt.*        base, proto
  worker      worker/                base, proto, engine, worker
  broker      broker/                base, proto, broker
  coordinator cluster/               base, proto, cluster
  cli         client/ (the rest)     base, proto, engine, libitt, cli

Then the link check: itt-broker, itt-coordinator and libitt.so (when built)
must not load OpenBLAS (ldd), since they do no inference.  A file that
includes a header no layer holds is reported too (a stale include).
"""

import os
import re
import subprocess
import sys

from itt_test import BIN, SOURCE

LAYERS = [
    # (name, folder, file filter or None)
    ("base", "proto/base", None),
    ("engine", "worker/engine", None),
    ("proto", "proto", None),
    ("libitt", "client", lambda f: f.startswith("libitt.")),
    ("cli", "client", lambda f: not f.startswith("libitt.")),
    ("worker", "worker", None),
    ("broker", "broker", None),
    ("coordinator", "cluster", None),
]

MAY_USE = {
    "base": {"base"},
    "proto": {"base", "proto"},
    "engine": {"base", "engine"},
    "libitt": {"base", "proto", "libitt"},
    "worker": {"base", "proto", "engine", "worker"},
    "broker": {"base", "proto", "broker"},
    "coordinator": {"base", "proto", "coordinator"},
    "cli": {"base", "proto", "engine", "libitt", "cli"},
}

GENERATED = {"itt.pb-c.h": "proto"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def layer_files():
    """{layer: [relative paths of its .c/.h files]}, each file in one layer:
    the deepest folder wins (proto/base is not proto, worker/engine is not
    worker)."""
    out = {name: [] for name, _, _ in LAYERS}
    seen = set()
    for name, folder, keep in LAYERS:
        root = os.path.join(SOURCE, folder)
        for dirpath, dirnames, files in os.walk(root):
            rel_dir = os.path.relpath(dirpath, SOURCE)
            # subfolders that are layers of their own, or not C at all
            dirnames[:] = [d for d in dirnames
                           if os.path.join(rel_dir, d) not in ("proto/base", "worker/engine")
                           and d not in ("python", "tools")]
            for f in files:
                if not f.endswith((".c", ".h")):
                    continue
                if keep and not keep(f):
                    continue
                rel = os.path.join(rel_dir, f)
                if rel not in seen:
                    seen.add(rel)
                    out[name].append(rel)
    # the engine's tools (itt-convert, itt-quantize, itt-synth) are engine programs
    tools = os.path.join(SOURCE, "worker/engine/tools")
    for f in sorted(os.listdir(tools)) if os.path.isdir(tools) else []:
        if f.endswith(".c"):
            out["engine"].append(os.path.join("worker/engine/tools", f))
    return out


def main():
    files = layer_files()
    owner = dict(GENERATED)  # header basename -> layer
    for name, paths in files.items():
        for p in paths:
            if p.endswith(".h"):
                owner[os.path.basename(p)] = name
    bad = []
    n_includes = 0
    for name, paths in files.items():
        for p in paths:
            with open(os.path.join(SOURCE, p), encoding="utf-8") as fh:
                text = fh.read()
            for inc in INCLUDE.findall(text):
                n_includes += 1
                base = os.path.basename(inc)
                target = owner.get(base)
                if target is None:
                    bad.append(f"{p}: includes \"{inc}\", which no layer holds")
                elif target not in MAY_USE[name]:
                    bad.append(f"{p} ({name}) includes \"{inc}\" of the {target} layer, "
                               f"which is above it or beside it")
    print(f"{sum(len(v) for v in files.values())} files, {n_includes} project includes checked")

    for prog in ("itt-broker", "itt-coordinator"):
        path = os.path.join(BIN, prog)
        if not os.access(path, os.X_OK):
            print(f"note: {path} is not built; its link check is left out")
            continue
        libs = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
        if "blas" in libs.lower():
            bad.append(f"{prog} loads a BLAS: {libs}")
        else:
            print(f"{prog}: no BLAS among its {len(libs.splitlines())} shared objects")
    lib_dir = os.path.dirname(BIN)
    shared = [os.path.join(d, f) for d, _, fs in os.walk(lib_dir) for f in fs
              if f.startswith("libitt.so")]
    if shared:
        libs = subprocess.run(["ldd", shared[0]], capture_output=True, text=True).stdout
        if "blas" in libs.lower():
            bad.append(f"libitt.so loads a BLAS: {libs}")
        else:
            print(f"libitt.so: no BLAS among its {len(libs.splitlines())} shared objects")
    if bad:
        print("layer violations:")
        for b in bad:
            print("  " + b)
        sys.exit(1)
    print("every include points down; no BLAS in the processes that do no inference")


if __name__ == "__main__":
    main()
