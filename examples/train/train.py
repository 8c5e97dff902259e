"""A tiny "training" script for the hpcagent demo: argparse args, progress, a final metric."""

from __future__ import annotations

import argparse
import math
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description="toy training loop")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(f"training with epochs={args.epochs} lr={args.lr}", flush=True)
    loss = 1.0
    for epoch in range(1, args.epochs + 1):
        for step in range(1, args.steps + 1):
            loss *= 1.0 - args.lr / (10.0 + step)
            bar = "#" * (20 * step // args.steps)
            # a carriage-return progress bar: hpcagent keeps only its last state in the log
            sys.stdout.write(f"\repoch {epoch} [{bar:<20}] step {step}/{args.steps}")
            sys.stdout.flush()
            time.sleep(0.01)
        print(f"\nepoch {epoch} loss={loss:.4f} log10={math.log10(loss):.2f}", flush=True)
    print(f"done: final loss {loss:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
