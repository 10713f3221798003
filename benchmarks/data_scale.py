"""Data at scale: 1M Alpaca-length rows as Parquet shards through `sft data --prepare`, the cache and streaming.

    HF_HUB_OFFLINE=1 python benchmarks/data_scale.py [--rows 1000000] [--list-rows 100000] [--stream-copies 4]

Measured in one run, each configuration in its own process (so each peak is its own; with num_proc > 1
the workers' memory is summed with the parent's at each 0.1 s sample, see TreePeak). Times exclude the
imports (about 5 s per process), which every start pays alike:
  raw          batched tokenisation of the same rendered texts, one process (the limit; its rate is taken on the
               first --raw-rows rows)
  prepare-1/2  `sft data --prepare` (load, convert, clean, split, render, tokenise, write the cache), num_proc 1 / 2;
               peak memory is taken before the tokens are counted, as RSS and as private (anonymous) memory
  cached       the second start: the same recipe again, served from the cache
  list         the list path that preceded the Arrow stages: records as dicts (`load_splits`), features as lists
               (`encode`), then `Dataset.from_list`, at --list-rows
  arrow        this pipeline at --list-rows, for a like-for-like comparison with `list`
  stream-1M/4M a streamed run's data side: 100,000 tokenised training examples read from the 1M-row corpus and
               from a 4M-row one (the 1M shards linked four times), RSS after 50k and 100k examples
Rows are real Alpaca-demo rows (../shared/data) made distinct by an item number; the tokenizer is GPT-2's
(../shared/tokenizers/gpt2). Results go to benchmarks/data-scale/results.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARD_ROWS = 50_000


def proc_kb(path: str, field: str) -> float:
    """One field of a /proc status-like file (`VmHWM:`, `VmRSS:`, `Pss_Anon:`), kB; 0 once the process is gone."""
    try:
        with open(path) as fh:
            return next(int(x.split()[1]) for x in fh if x.startswith(field))
    except (OSError, StopIteration):
        return 0.0


def own_peak_rss_mb() -> float:
    """This process's RSS high-water mark (VmHWM), MiB. (getrusage's RUSAGE_CHILDREN is not added: a child
    forked and exec'd reports the parent's pages it held at the fork as its own peak, counting them twice.)"""
    return proc_kb("/proc/self/status", "VmHWM:") / 1024


class TreePeak:
    """Peak memory of this process and its children (the num_proc workers), sampled every `every_s`:
    - `rss`: RSS summed over the tree (a page a forked worker shares with its parent counts in both, as RSS
      does), never below this process's own high-water mark;
    - `private`: anonymous memory as proportional set size (a shared page counts once): what a run costs the
      machine. RSS also counts pages of memory-mapped files, which the kernel can drop and which ranks mapping
      the same cache share."""

    def __init__(self, every_s: float = 0.1):
        import threading

        self.rss = self.private = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.rss = max(self.rss, own_peak_rss_mb())

    def _run(self, every_s: float) -> None:
        import psutil  # accelerate's dependency

        me = psutil.Process()
        while not self._stop.is_set():
            pids = [me.pid] + [c.pid for c in me.children(recursive=True)]
            self.private = max(self.private, sum(proc_kb(f"/proc/{p}/smaps_rollup", "Pss_Anon:") for p in pids) / 1024)
            self.rss = max(self.rss, sum(proc_kb(f"/proc/{p}/status", "VmRSS:") for p in pids) / 1024)
            self._stop.wait(every_s)


def current_rss_mb() -> float:
    return proc_kb("/proc/self/status", "VmRSS:") / 1024


# ---- corpus -------------------------------------------------------------------------------------

def base_rows() -> list[dict]:
    path = os.path.join(SHARED, "data", "llamafactory", "alpaca_en_demo.json")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def generate(rows: int, out: str, seed: int = 0) -> None:
    """`rows` Alpaca rows in Parquet shards of 50,000, each made distinct by an item number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = base_rows()
    rng = random.Random(seed)
    os.makedirs(out, exist_ok=True)
    for shard, start in enumerate(range(0, rows, SHARD_ROWS)):
        n = min(SHARD_ROWS, rows - start)
        picks = [base[rng.randrange(len(base))] for _ in range(n)]
        table = pa.table({"instruction": [f"Item {start + i}. {r['instruction']}" for i, r in enumerate(picks)],
                          "input": [r["input"] for r in picks], "output": [r["output"] for r in picks]})
        pq.write_table(table, os.path.join(out, f"part-{shard:05d}.parquet"))


def link_copies(src_dir: str, out: str, copies: int) -> None:
    """A corpus `copies` times the size of `src_dir`, made of links to its shards (content is irrelevant to
    what a stream holds in memory; the row count is what grows)."""
    os.makedirs(out, exist_ok=True)
    for c in range(copies):
        for f in sorted(os.listdir(src_dir)):
            dst = os.path.join(out, f"copy{c}-{f}")
            if not os.path.exists(dst):
                os.symlink(os.path.join(src_dir, f), dst)


def recipe(data_glob: str, cache_dir: str, **data) -> "object":
    from sft.recipe import recipe_from_dict

    return recipe_from_dict({
        "model": {"name": "gpt2", "init": "scratch", "tokenizer": os.path.join(SHARED, "tokenizers", "gpt2")},
        "data": {"sources": [{"path": data_glob}], "template": "alpaca", "max_length": 1024, "eval_ratio": 0.01,
                 "max_eval_samples": 200, "cache_dir": cache_dir, **data},
        "train": {"output_dir": "unused", "max_steps": 1000, "report_to": ["none"]}}, path="data_scale.yaml")


# ---- one measurement per process ----------------------------------------------------------------

def run_raw(data_glob: str, rows: int) -> dict:
    import glob

    import pyarrow.parquet as pq

    from sft.data.templates import get_template, render_training
    from sft.tokenizer import get_tokenizer

    r = recipe(data_glob, "unused")
    tok = get_tokenizer(r, None, "causal")
    tpl = get_template("alpaca", tok)
    texts = []
    for f in sorted(glob.glob(data_glob)):
        if len(texts) >= rows:
            break
        for row in pq.read_table(f).to_pylist()[: rows - len(texts)]:
            user = row["instruction"] + (("\n\n" + row["input"]) if row["input"] else "")
            msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
            texts.append("".join(t for t, _ in render_training(tpl, msgs, None)))
    # the limit: the fast tokenizer's batched call, and its backend's offset-free batch call (which sft uses);
    # the faster of the two is the reference
    walls = {}
    for name, call in (("tokenizer(texts)", lambda b: tok(b, add_special_tokens=False)["input_ids"]),
                       ("encode_batch_fast", lambda b: [e.ids for e in tok._tokenizer.encode_batch_fast(
                           b, add_special_tokens=False)])):
        start = time.perf_counter()
        tokens = 0
        for i in range(0, len(texts), 1000):
            tokens += sum(len(x) for x in call(texts[i:i + 1000]))
        walls[name] = time.perf_counter() - start
    best = min(walls, key=walls.get)
    return {"examples": len(texts), "tokens": tokens, "wall_s": walls[best], "call": best,
            "walls": {k: round(v, 2) for k, v in walls.items()}}


def run_prepare(data_glob: str, cache_dir: str, num_proc: int) -> dict:
    from sft.prepare import prepare_data

    r = recipe(data_glob, cache_dir, num_proc=num_proc)  # validating a recipe imports the trainer stack: untimed
    start = time.perf_counter()
    with TreePeak() as peak:
        prep = prepare_data(r, "causal")
    wall = time.perf_counter() - start
    peaks = {"peak_rss_mb": round(peak.rss, 1), "peak_private_mb": round(peak.private, 1)}  # before counting
    ds = prep.train.dataset
    tokens = sum(len(x) for batch in ds.select_columns(["input_ids"]).iter(batch_size=10_000)
                 for x in batch["input_ids"])
    return {"examples": len(ds), "tokens": tokens, "wall_s": wall, "cache": prep.cache, **peaks}


def run_list(data_glob: str) -> dict:
    """The previous pipeline: records and features as Python lists, then Dataset.from_list for the trainer."""
    from datasets import Dataset

    from sft.data.encode import encode
    from sft.data.pipeline import load_splits
    from sft.tokenizer import get_tokenizer

    r = recipe(data_glob, "unused")
    start = time.perf_counter()
    peak = TreePeak().__enter__()
    splits = load_splits(r.data)
    tok = get_tokenizer(r, None, "causal")
    enc = encode(splits.train, tok, "alpaca", arch="causal", max_length=1024, report=splits.report)
    ds = Dataset.from_list([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in enc.features])
    wall = time.perf_counter() - start
    peak.__exit__()
    return {"examples": len(ds), "tokens": sum(len(f["input_ids"]) for f in enc.features), "wall_s": wall,
            "peak_rss_mb": round(peak.rss, 1), "peak_private_mb": round(peak.private, 1)}


def run_stream(data_glob: str, examples: int) -> dict:
    import datasets

    from sft.prepare import prepare_data

    r = recipe(data_glob, "unused", streaming=True)
    start = time.perf_counter()
    prep = prepare_data(r, "causal")
    rss, tokens, n = {}, 0, 0
    for ex in prep.train.dataset:
        n += 1
        tokens += len(ex["input_ids"])
        if n in (examples // 2, examples):
            rss[n] = round(current_rss_mb(), 1)
        if n >= examples:
            break
    wall = time.perf_counter() - start
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0  # measured; not part of what a run holds
    return {"examples": n, "tokens": tokens, "wall_s": wall, "rss_at": rss}


def child(argv: list[str]) -> None:
    import datasets  # noqa: F401  (imports are not part of what is measured)
    import transformers  # noqa: F401

    import sft.modeling  # noqa: F401
    import sft.prepare  # noqa: F401

    kind, args = argv[0], argv[1:]
    fn = {"raw": lambda: run_raw(args[0], int(args[1])), "prepare": lambda: run_prepare(args[0], args[1], int(args[2])),
          "list": lambda: run_list(args[0]), "stream": lambda: run_stream(args[0], int(args[1]))}[kind]
    out = fn()
    out.setdefault("peak_rss_mb", round(own_peak_rss_mb(), 1))
    print("RESULT " + json.dumps(out), flush=True)


def measure(*argv: str) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "_child", *argv], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{argv[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    res = json.loads(line[7:])
    print(f"  {' '.join(argv[:1])}: {res}", flush=True)
    return res


# ---- the run ------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--list-rows", type=int, default=100_000)
    ap.add_argument("--raw-rows", type=int, default=200_000, help="rows whose rendered texts set the raw rate "
                    "(a rate: tokens/s do not depend on how many rows are timed)")
    ap.add_argument("--stream-copies", type=int, default=4, help="the large streamed corpus is --rows times this")
    ap.add_argument("--stream-examples", type=int, default=100_000)
    ap.add_argument("--work", default="/tmp/sft-data-scale", help="scratch folder (shards, caches): removed after")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "data-scale"))
    ap.add_argument("--table-only", action="store_true", help="rewrite results.md from --out's results.json")
    args = ap.parse_args()
    if args.table_only:
        with open(os.path.join(args.out, "results.json"), encoding="utf-8") as fh:
            return write(json.load(fh), args)
    if not os.path.isdir(os.path.join(SHARED, "tokenizers", "gpt2")):
        raise SystemExit(f"needs ../shared (the GPT-2 tokenizer and the Alpaca demo rows) beside the project: {SHARED}")
    if os.path.exists(args.work) and os.listdir(args.work):
        raise SystemExit(f"{args.work} is not empty: pass another --work (this script removes what it writes)")
    os.makedirs(args.work, exist_ok=True)
    try:
        results = run_all(args)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    write(results, args)


def run_all(args) -> dict:
    w = args.work
    big, small, huge = (os.path.join(w, n) for n in ("corpus", "corpus-small", "corpus-x"))
    t = time.perf_counter()
    generate(args.rows, big)
    generate(args.list_rows, small, seed=1)
    link_copies(big, huge, args.stream_copies)
    print(f"generated {args.rows:,} + {args.list_rows:,} rows in {time.perf_counter() - t:.0f} s", flush=True)
    g = lambda d: os.path.join(d, "*.parquet")  # noqa: E731
    res = {"rows": args.rows, "list_rows": args.list_rows, "stream_rows": args.rows * args.stream_copies,
           "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    res["raw"] = measure("raw", g(big), str(args.raw_rows))
    res["prepare_1"] = measure("prepare", g(big), os.path.join(w, "cache1"), "1")
    res["cached"] = measure("prepare", g(big), os.path.join(w, "cache1"), "1")
    res["prepare_2"] = measure("prepare", g(big), os.path.join(w, "cache2"), "2")
    res["list"] = measure("list", g(small))
    res["arrow"] = measure("prepare", g(small), os.path.join(w, "cache3"), "1")
    res["stream_1x"] = measure("stream", g(big), str(args.stream_examples))
    res["stream_nx"] = measure("stream", g(huge), str(args.stream_examples))
    return res


def write(res: dict, args) -> None:
    def tps(r):
        return r["tokens"] / r["wall_s"]

    raw = tps(res["raw"])
    rows = [
        (f"raw batched tokenisation (the limit: {res['raw']['call']})", res["raw"],
         f"rate from {res['raw']['examples']:,}", "the first rows of the same corpus; " +
         ", ".join(f"{k} {v:.1f} s" for k, v in res["raw"]["walls"].items())),
        ("`sft data --prepare`, num_proc 1", res["prepare_1"], f"{res['rows']:,}", f"{tps(res['prepare_1']) / raw:.0%}"),
        ("`sft data --prepare`, num_proc 2", res["prepare_2"], f"{res['rows']:,}", f"{tps(res['prepare_2']) / raw:.0%}"),
        ("second start (cache hit)", res["cached"], f"{res['rows']:,}",
         f"{res['prepare_1']['wall_s'] / res['cached']['wall_s']:.0f}x faster than cold"),
        ("list path (dicts, `encode`, `Dataset.from_list`)", res["list"], f"{res['list_rows']:,}", "-"),
        ("this pipeline, same rows", res["arrow"], f"{res['list_rows']:,}", "-"),
    ]
    def private(r):
        return f"{r['peak_private_mb']:,.0f}" if "peak_private_mb" in r else "-"

    lines = ["| stage | rows | wall s | tokens/s | peak RSS MiB | peak private MiB | vs raw / note |",
             "|---|---|---|---|---|---|---|"]
    for name, r, n, note in rows:
        rate = "-" if r.get("cache") == "hit" else f"{tps(r):,.0f}"  # nothing is tokenised on a hit
        lines.append(f"| {name} | {n} | {r['wall_s']:.1f} | {rate} | {r['peak_rss_mb']:,.0f} | {private(r)} | "
                     f"{note} |")
    s1, sn = res["stream_1x"], res["stream_nx"]
    for name, r, n in (("streaming, 100k examples read", s1, res["rows"]), ("streaming, 100k examples read", sn,
                                                                            res["stream_rows"])):
        at = ", ".join(f"{int(k):,}: {v:,.0f}" for k, v in r["rss_at"].items())
        lines.append(f"| {name} | {n:,} | {r['wall_s']:.1f} | {tps(r):,.0f} | {r['peak_rss_mb']:,.0f} | - | "
                     f"RSS after {at} examples read |")
    growth = sn["peak_rss_mb"] / s1["peak_rss_mb"] - 1
    goals = [
        f"prepare at >= 80 % of raw tokens/s: num_proc 1 {tps(res['prepare_1']) / raw:.0%}, num_proc 2 "
        f"{tps(res['prepare_2']) / raw:.0%}",
        f"cached start >= 20x faster than cold: {res['prepare_1']['wall_s'] / res['cached']['wall_s']:.0f}x",
        f"peak memory <= 2 GB for {res['rows']:,} rows (num_proc 1): private {res['prepare_1']['peak_private_mb']:,.0f}"
        f" MiB, RSS {res['prepare_1']['peak_rss_mb']:,.0f} MiB",
        f"streaming RSS flat from {res['rows']:,} to {res['stream_rows']:,} rows (within 10 %): {growth:+.1%}",
    ]
    os.makedirs(args.out, exist_ok=True)
    md = "\n".join(["# Data at scale (benchmarks/data_scale.py)", "",
                    f"{os.cpu_count()} CPUs; GPT-2 tokenizer; Alpaca-demo rows made distinct; "
                    f"{res.get('date', time.strftime('%Y-%m-%d'))}.", "", *lines, "", "Goals:", *[f"- {g}" for g in goals], ""])
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as fh:
        fh.write(md)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as fh:
        json.dump(res, fh, indent=1)
    print(md)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2:])
    else:
        main()
