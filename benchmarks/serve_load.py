"""Load on `--mode=serve`: sentences/s and latency at 1, 8 and 32 concurrent clients, beside the
`Translator` called directly in one process.

    python -m benchmarks.serve_load --workdir=runs/small --input_file=sentences.txt
    python -m benchmarks.serve_load --workdir=runs/small --input_file=sentences.txt --clients 1 8 32 \\
        --requests=96 --seconds=20 --repeats=3 --set decode.strategy=greedy --output=runs/serve_load.md

The server runs as a user starts it (`python -m train.translate --mode=serve --port=0`, 127.0.0.1
only). Each client sends one sentence a request, the next when the answer is back, cycling through
`--input_file`; a level ends after `--requests` requests or `--seconds`, whichever comes first. The
direct baseline translates the same sentences one call per sentence (`Translator.translate([s])`),
then 32 a call, in this process while the server is idle. Latency is per request (per call for the
baseline); every figure is the median of `--repeats` runs of the level. `--set FIELD=VALUE`
changes a decode-time field for both (as `--config.FIELD=VALUE` would). Failed requests (non-200
or no answer) are counted and reported, and so is how the server exits after SIGTERM; the script
exits 1 if a request failed or the server did not exit 0.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _post(url: str, body: dict, timeout: float = 120) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except OSError as e:
        return getattr(e, "code", 0) or 0, {"error": str(e)}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def load_level(url: str, sentences: list[str], clients: int, requests: int, seconds: float) -> dict:
    """`clients` closed-loop clients, one sentence a request, until `requests` or `seconds`."""
    latencies: list[float] = []
    failures = 0
    issued = iter(range(requests))
    start = time.perf_counter()
    deadline = start + seconds

    def client() -> tuple[list[float], int]:
        mine, failed = [], 0
        for i in issued:  # the iterator is shared: `requests` in all
            if time.perf_counter() > deadline:
                break
            sent = time.perf_counter()
            status, answer = _post(url + "/translate", {"sentences": [sentences[i % len(sentences)]]})
            mine.append(time.perf_counter() - sent)
            failed += status != 200 or len(answer.get("translations", [])) != 1
        return mine, failed

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for mine, failed in pool.map(lambda _: client(), range(clients)):
            latencies += mine
            failures += failed
    wall = time.perf_counter() - start
    return {"requests": len(latencies), "failed": failures, "sentences_per_s": len(latencies) / wall,
            "p50_ms": 1000 * _percentile(latencies, 0.5), "p95_ms": 1000 * _percentile(latencies, 0.95)}


def direct(workdir: str, sentences: list[str], requests: int, batch: int, repeats: int,
           overrides: dict[str, str]) -> list[dict]:
    """The Translator in this process, `batch` sentences a call, `repeats` runs."""
    from train import modes, saved_config  # noqa: PLC0415
    from train.translation import Translator  # noqa: PLC0415

    typed = {key: _literal(value) for key, value in overrides.items()}
    config = saved_config.trained_run_config(workdir, typed)  # decode-time fields only, as on the command line
    translator = Translator(modes.load_trained(config, workdir), batch_size=batch)
    for rows in sorted({translator.rows_for(n) for n in range(1, batch + 1)}):  # compile every shape first,
        for length in translator.lengths_for(0):                                 # as the server does
            translator.compile_shape(rows, length)
    return [_direct_run(translator, sentences, requests, batch) for _ in range(repeats)]


def _direct_run(translator, sentences: list[str], requests: int, batch: int) -> dict:
    chunks = [[sentences[(i + j) % len(sentences)] for j in range(batch)] for i in range(0, requests, batch)]
    latencies = []
    start = time.perf_counter()
    for chunk in chunks:
        sent = time.perf_counter()
        translator.translate(chunk)
        latencies.append(time.perf_counter() - sent)
    wall = time.perf_counter() - start
    return {"requests": len(chunks), "failed": 0, "sentences_per_s": len(chunks) * batch / wall,
            "p50_ms": 1000 * _percentile(latencies, 0.5), "p95_ms": 1000 * _percentile(latencies, 0.95)}


def _literal(value: str):
    """"4" -> 4, "0.6" -> 0.6, "(1,)" -> (1,), "greedy" -> "greedy"."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def start_server(workdir: str, overrides: dict[str, str]) -> tuple[subprocess.Popen, str, float]:
    """The server as a user starts it; (process, base URL, seconds until it served)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "train.translate", f"--workdir={workdir}", "--mode=serve",
                             "--port=0", *(f"--config.{k}={v}" for k, v in overrides.items())], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    match = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
    if not match:
        proc.kill()
        raise SystemExit(f"error: the server did not start (exit {proc.wait()}): {line.strip()}")
    return proc, match.group(1), time.perf_counter() - start


def _median_level(runs: list[dict]) -> dict:
    keys = ("sentences_per_s", "p50_ms", "p95_ms")
    return {**{k: statistics.median(r[k] for r in runs) for k in keys},
            "requests": sum(r["requests"] for r in runs), "failed": sum(r["failed"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained run")
    parser.add_argument("--input_file", required=True, help="sentences, one a line (blank lines are skipped)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=300, help="requests per level and run (at most)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per level and run (at most)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each level; the median is reported")
    parser.add_argument("--output", default="", help="markdown file for the table (default: stdout only)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="decode-time config field for the server and the direct calls, e.g. decode.strategy=greedy")
    args = parser.parse_args(argv)
    with open(args.input_file, encoding="utf-8") as f:
        sentences = [line.strip() for line in f if line.strip()]
    if not sentences:
        parser.error(f"--input_file: {args.input_file!r} has no sentences")

    overrides = dict(item.split("=", 1) for item in args.set)
    rows = {"direct, 1 sentence a call": _median_level(
                direct(args.workdir, sentences, args.requests, 1, args.repeats, overrides)),
            "direct, 32 sentences a call": _median_level(
                direct(args.workdir, sentences, args.requests, 32, args.repeats, overrides))}
    proc, url, startup = start_server(args.workdir, overrides)
    try:
        sent = time.perf_counter()
        _post(url + "/translate", {"sentences": sentences[:1]})  # shapes compiled at start-up: as fast as any
        first = time.perf_counter() - sent
        for clients in args.clients:
            rows[f"server, {clients} client{'s' * (clients > 1)}"] = _median_level(
                [load_level(url, sentences, clients, args.requests, args.seconds) for _ in range(args.repeats)])
    finally:
        stopping = time.perf_counter()
        proc.terminate()  # SIGTERM: the server answers what is in flight and exits 0
        try:
            stopped = (proc.wait(timeout=120), time.perf_counter() - stopping)
        except subprocess.TimeoutExpired:
            proc.kill()
            stopped = (f"killed, still running {time.perf_counter() - stopping:.0f} s after SIGTERM", 0.0)
    lines = [f"server start-up (load, compile, listen): {startup:.1f} s; its first request: {1000 * first:.1f} ms; "
             f"median of {args.repeats} runs per row; {len(sentences)} distinct sentences; after SIGTERM it "
             f"exited with status {stopped[0]} in {stopped[1]:.1f} s", "",
             "| | requests | failed | sentences/s | p50 ms | p95 ms |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['requests']} | {r['failed']} | {r['sentences_per_s']:.1f} | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    return 1 if any(r["failed"] for r in rows.values()) or stopped[0] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
