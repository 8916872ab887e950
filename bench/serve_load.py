"""Serving load: `tunelab serve` on transformers vs llama.cpp (f16, q8_0), at 1, 4 and 16 concurrent clients.

Usage: python bench/serve_load.py [RUN_DIR (default runs/demo)] [--clients 1 4 16] [--workers 1 2]
       [--slots 16] [--requests 96]

RUN_DIR is a tuned, evaluated run with a GGUF export holding f16 and q8_0
(`make demo && tunelab export runs/demo -f gguf -q q8_0`). Each engine runs as its own
`tunelab serve` process on 127.0.0.1 (as deployed), started and stopped here, once per
`serve.workers` value (copies of the model answering at once, the cores shared between them; for
llama-server, llama.cpp's own server, `--slots` parallel slots batched in one model instead); clients
are threads, each with its own keep-alive connection, sending OpenAI chat completions of the run's
test prompts one after another (`--requests` per concurrency level split evenly between them, the
same prompts for every engine). Per engine, workers and concurrency level: requests/s, p50 and p95
latency, answer tokens/s (the run's tokenizer counting each answer) and the agreement of the answers
with eval/predictions.jsonl (what the evaluation recorded for the same prompts).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = {"transformers": ["serve.engine=transformers"],
           "llama.cpp f16": ["serve.engine=llama.cpp", "serve.gguf=f16"],
           "llama.cpp q8_0": ["serve.engine=llama.cpp", "serve.gguf=q8_0"]}
LLAMA_SERVER = ("llama-server q8_0", ["serve.engine=llama-server", "serve.gguf=q8_0"])  # run with --slots


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(run_dir: Path, overrides: list[str]) -> tuple[subprocess.Popen, str]:
    import httpx2 as httpx

    port = free_port()
    command = [sys.executable, "-m", "tunelab", "serve", str(run_dir), "--port", str(port)]
    for override in overrides:
        command += ["--set", override]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"tunelab serve {' '.join(overrides)} exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"tunelab serve {' '.join(overrides)} did not answer /health within 300 s")


def load(url: str, model: str, prompts: list[dict], clients: int) -> tuple[float, list[float], list[str]]:
    """(wall seconds, per-request latencies, answers in prompt order) for `prompts` sent by `clients`
    threads, client c sending prompts c, c + clients, … one after another on one connection."""
    import httpx2 as httpx

    def client_share(first: int) -> list[tuple[int, float, str]]:
        done = []
        with httpx.Client(base_url=url, timeout=600) as connection:
            for number in range(first, len(prompts), clients):
                started = time.perf_counter()
                response = connection.post("/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": prompts[number]["input"]}]})
                response.raise_for_status()
                answer = response.json()["choices"][0]["message"]["content"]
                done.append((number, time.perf_counter() - started, answer))
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = sorted(result for share in pool.map(client_share, range(clients)) for result in share)
    return time.perf_counter() - started, [r[1] for r in results], [r[2] for r in results]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="serve.workers values to compare")
    parser.add_argument("--slots", type=int, default=16, help="llama-server's parallel slots (its serve.workers)")
    parser.add_argument("--requests", type=int, default=96, help="requests per engine and concurrency level")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from transformers import AutoTokenizer

    from tunelab.rundir import read_jsonl

    run_dir = args.run_dir.resolve()
    files = json.loads((run_dir / "export" / "gguf" / "export.json").read_text())["files"]
    missing = {"f16", "q8_0"} - set(files)
    if missing:
        raise SystemExit(f"{run_dir}/export/gguf lacks {', '.join(sorted(missing))}: tunelab export {run_dir} "
                         "-f gguf -q q8_0")
    predictions = read_jsonl(run_dir / "eval" / "predictions.jsonl")
    prompts = [predictions[i % len(predictions)] for i in range(args.requests)]
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    rows = []
    cells = [(engine, overrides, workers) for (engine, overrides), workers in itertools.product(ENGINES.items(),
                                                                                               args.workers)]
    cells.append((*LLAMA_SERVER, args.slots))
    for engine, overrides, workers in cells:
        server, url = start_server(run_dir, [*overrides, f"serve.workers={workers}"])
        try:
            load(url, run_dir.name, prompts[:2 * workers], workers)  # warm-up: first-request allocations
            for clients in args.clients:
                wall, latencies, answers = load(url, run_dir.name, prompts, clients)
                tokens = sum(len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1 for answer in answers)
                same = sum(answer == p["tuned_answer"] for answer, p in zip(answers, prompts, strict=True))
                rows.append({"engine": engine, "workers": workers, "clients": clients, "requests": len(prompts),
                             "requests_per_s": len(prompts) / wall, "p50_s": statistics.median(latencies),
                             "p95_s": percentile(latencies, 0.95), "tokens_per_s": tokens / wall,
                             "agreement": same / len(prompts)})
                print(f"{engine:15s} workers {workers} clients {clients:2d}: {rows[-1]['requests_per_s']:.2f} req/s, "
                      f"p50 {rows[-1]['p50_s']:.2f} s, agreement {rows[-1]['agreement']:.1%}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"\nrun {run_dir} ({len(predictions)} test prompts, {args.requests} requests per cell), "
          f"{os.cpu_count()} cores\n")
    print("| engine | workers | clients | requests/s | p50 latency | p95 latency | answer tokens/s | "
          "agreement with eval |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['engine']} | {row['workers']} | {row['clients']} | {row['requests_per_s']:.2f} | "
              f"{row['p50_s']:.3f} s | {row['p95_s']:.3f} s | {row['tokens_per_s']:.1f} | {row['agreement']:.1%} |")
    same_workers = {(row["workers"], row["clients"]): row["requests_per_s"] for row in rows
                    if row["engine"] == "transformers"}
    best = {clients: max(rate for (_, c), rate in same_workers.items() if c == clients) for clients in args.clients}
    for row in rows:
        if row["engine"] != "transformers":
            rate = row["requests_per_s"]
            alike = same_workers.get((row["workers"], row["clients"]))
            print(f"{row['engine']}, {row['workers']} workers, {row['clients']} clients: "
                  + (f"{rate / alike:.2f}x transformers with as many workers, " if alike else "")
                  + f"{rate / best[row['clients']]:.2f}x its best")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
