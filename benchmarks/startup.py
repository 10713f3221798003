"""Start-up of sft commands as whole processes: what a user waits for before anything happens.

    python benchmarks/startup.py [--runs 5]

Times `sft --help`, `sft recipe show recipes/quickstart.yaml` and a cached `sft data recipes/quickstart.yaml
--prepare` (the cache is built once first; its own read time is what the command prints), each run --runs times,
the commands interleaved (A B C A B C ...), and prints the median with the range."""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SFT_CACHE": tempfile.mkdtemp(prefix="sft-startup-")}
    sft = [sys.executable, "-m", "sft"]
    commands = {"sft --help": sft + ["--help"],
                "sft recipe show": sft + ["recipe", "show", "recipes/quickstart.yaml"],
                "sft data --prepare (cached)": sft + ["data", "recipes/quickstart.yaml", "--prepare"]}
    subprocess.run(commands["sft data --prepare (cached)"], cwd=ROOT, env=env, check=True, capture_output=True)
    times = {k: [] for k in commands}
    cache_s = []
    for _ in range(args.runs):
        for name, cmd in commands.items():
            t0 = time.perf_counter()
            out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
            times[name].append(time.perf_counter() - t0)
            m = re.search(r"MB, ([\d.]+) s\)", out)
            if m:
                cache_s.append(float(m.group(1)))
    for name, ts in times.items():
        print(f"{name}: median {statistics.median(ts):.2f} s (range {min(ts):.2f}-{max(ts):.2f}, {len(ts)} runs)")
    if cache_s:
        print(f"  of which the cache's own read: median {statistics.median(cache_s):.2f} s")


if __name__ == "__main__":
    main()
