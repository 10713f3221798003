"""Start-up of sft commands as whole processes: what a user waits for before anything happens.

    python benchmarks/startup.py [--runs 5]

Times `sft --help`, `sft recipe show recipes/quickstart.yaml`, a cached `sft data recipes/quickstart.yaml
--prepare` (the cache is built once first; its own read time is what the command prints) and a cached `sft train`
of the quickstart up to its first optimiser step (no evaluation; the time until the step's loss is logged, and the
time until the "trainable parameters" line, where the model is built and the Trainer comes next), each run --runs
times, the commands interleaved (A B C D A B C D ...), and prints the median with the range."""

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
    out_dir = tempfile.mkdtemp(prefix="sft-startup-run-")
    train = sft + ["train", "recipes/quickstart.yaml", "--overwrite", f"train.output_dir={out_dir}",
                   "train.max_steps=1", "train.logging_steps=1", "eval.before=false", "eval.after=false",
                   "train.report_to=none"]
    subprocess.run(commands["sft data --prepare (cached)"], cwd=ROOT, env=env, check=True, capture_output=True)
    subprocess.run(train, cwd=ROOT, env=env, check=True, capture_output=True)  # its tokenised cache, once
    commands["sft train, to the first step (cached)"] = train
    times = {k: [] for k in commands}
    cache_s, built_s = [], []
    for _ in range(args.runs):
        for name, cmd in commands.items():
            t0 = time.perf_counter()
            if cmd is train:
                built, first = _train_marks(cmd, env, t0)
                built_s.append(built)
                times[name].append(first)
                continue
            out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
            times[name].append(time.perf_counter() - t0)
            m = re.search(r"MB, ([\d.]+) s\)", out)
            if m:
                cache_s.append(float(m.group(1)))
    for name, ts in times.items():
        print(f"{name}: median {statistics.median(ts):.2f} s (range {min(ts):.2f}-{max(ts):.2f}, {len(ts)} runs)")
        if name.startswith("sft data") and cache_s:
            print(f"  of which the cache's own read: median {statistics.median(cache_s):.2f} s")
    print(f"  sft train: the model built (\"trainable parameters\") at median {statistics.median(built_s):.2f} s "
          f"(range {min(built_s):.2f}-{max(built_s):.2f})")


def _train_marks(cmd: list[str], env: dict, t0: float) -> tuple[float, float]:
    """Seconds from the start until the model is built and until the first step's loss is logged."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    built = first = None
    for line in proc.stdout:
        if built is None and "trainable parameters" in line:
            built = time.perf_counter() - t0
        if first is None and re.search(r"'loss'|\"loss\"", line):
            first = time.perf_counter() - t0
    if proc.wait() != 0 or built is None or first is None:
        raise SystemExit(f"sft train failed or logged no step: {' '.join(cmd)}")
    return built, first


if __name__ == "__main__":
    main()
