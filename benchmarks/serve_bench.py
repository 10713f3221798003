"""`sft serve` throughput and latency: requests/s and p50/p95 latency with 1 and 8 concurrent clients, with
transformers serve's continuous batching off and on, each server started fresh by `sft serve` on 127.0.0.1.

    python benchmarks/serve_bench.py --model outputs/quickstart [--requests 48] [--max-tokens 32]

Clients are threads with the official openai client; every request is greedy chat with the same max_tokens, on
prompts of the synthetic suite (the quickstart's tasks). Prints a markdown table."""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: str, cb: bool):
    import openai

    port = free_port()
    log = open(os.devnull, "w")
    proc = subprocess.Popen([sys.executable, "-m", "sft", "serve", model, "--port", str(port)] +
                            (["--continuous-batching"] if cb else []), stdout=log, stderr=log, cwd=ROOT)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=300, max_retries=0)
    deadline = time.monotonic() + 300
    while True:
        try:
            name = client.models.list().data[0].id
            return proc, client, name
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("sft serve did not start")
            time.sleep(0.5)


def stop(proc) -> None:
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def run(client, name, prompts, concurrency: int, max_tokens: int):
    def one(msgs):
        t = time.perf_counter()
        r = client.chat.completions.create(model=name, messages=msgs, temperature=0, max_tokens=max_tokens)
        return time.perf_counter() - t, r.usage.completion_tokens

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, prompts))
    wall = time.perf_counter() - t0
    lat = sorted(x for x, _ in results)
    tokens = sum(n for _, n in results)
    return {"rps": len(prompts) / wall, "tok_s": tokens / wall, "p50": statistics.median(lat),
            "p95": lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))], "tokens": tokens / len(prompts)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="an sft run or model folder (e.g. outputs/quickstart)")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    from sft.data import synthetic

    rows = synthetic.generate(args.requests, seed=11)
    prompts = [[{"role": "user", "content": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")}]
               for r in rows]
    print(f"| continuous batching | clients | requests/s | tokens/s | p50 latency s | p95 latency s | tokens/answer |")
    print("|---|---|---|---|---|---|---|")
    for cb in (False, True):
        proc, client, name = start(args.model, cb)
        try:
            run(client, name, prompts[:4], 1, args.max_tokens)  # warm-up
            for conc in (1, 8):
                r = run(client, name, prompts, conc, args.max_tokens)
                print(f"| {'on' if cb else 'off'} | {conc} | {r['rps']:.2f} | {r['tok_s']:.1f} | {r['p50']:.3f} | "
                      f"{r['p95']:.3f} | {r['tokens']:.1f} |", flush=True)
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
