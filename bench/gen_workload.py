#!/usr/bin/env python3
"""Writes workload W1 deterministically: 2,000 text files in 40 folders,
about 8.4 MB, each 50 to 400 lines. `--scale 10` writes W1x10 (20,000 files,
about 84 MB). The same seed always gives the same bytes."""
import argparse
import os
import random

WORDS = ("kiln pipeline cache layer container digest runner build test step "
         "secret store image graph solve export module function value hash").split()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    files = 2000 * args.scale
    folders = 40 * args.scale
    total = 0
    for i in range(files):
        folder = os.path.join(args.out, f"dir{i % folders:03d}")
        os.makedirs(folder, exist_ok=True)
        lines = rng.randint(50, 400)
        # About 18.7 bytes a line on average: 8.4 MB for 2,000 files.
        text = "".join(
            f"{n:04d}{':' if n % 4 else ''} " + " ".join(rng.choice(WORDS) for _ in range(2)) + "\n"
            for n in range(lines)
        )
        with open(os.path.join(folder, f"file{i:05d}.txt"), "w") as f:
            f.write(text)
        total += len(text)
    print(f"{files} files in {folders} folders, {total} bytes")


if __name__ == "__main__":
    main()
