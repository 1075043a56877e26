#!/usr/bin/env python3
"""Streams a story from an itt cluster with the Python client.

    python3 example.py [--broker tcp://127.0.0.1:5555] [--model stories260K]
                       [--prompt "Once upon a time"] [-n 200] [--temperature 0.8]

Start a cluster first, e.g. `itt up --model stories260K.gguf`.  The message
classes come from $ITT_PY_DIR (the build's python folder) or are generated
from proto/itt.proto on first use (see itt_client.py).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from itt_client import Client, IttError  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--broker", default=os.environ.get("ITT_BROKER", "tcp://127.0.0.1:5555"))
    ap.add_argument("--model", default="stories260K")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("-n", "--max-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()

    with Client(args.broker) as client:
        try:
            sys.stdout.write(args.prompt)
            for item in client.generate(args.model, args.prompt, max_tokens=args.max_tokens,
                                        temperature=args.temperature, seed=args.seed):
                if item.final:
                    print(f"\n[{len(item.tokens)} tokens, stop: {item.stop_reason}, "
                          f"seed {item.seed}, first token {item.timings['first_token_ms']:.1f}"
                          f" ms, total {item.timings['total_ms']:.1f} ms]", file=sys.stderr)
                else:
                    sys.stdout.buffer.write(item.data)
                    sys.stdout.flush()
        except IttError as e:
            print(f"\nexample: {e.name}: {e.reason}", file=sys.stderr)
            return 1
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
