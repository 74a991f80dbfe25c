"""Load-test ``edgetts serve`` on loopback: N concurrent clients for a bounded time and count.

Starts its own server (``python -m edgetts.cli serve`` on a free 127.0.0.1 port), runs
``--clients`` threads that each send chat completions back to back with a short ``deadline_s``
for ``--duration-s`` seconds (at most ``--max-requests`` in all), then checks that the server still
answers ``--after`` ordinary requests normally, shuts it down with Ctrl-C (SIGINT) and reports:
requests served, 503s, p50/p95 latency against the deadline, peak RSS (VmHWM) and the exit code.

A client that gets 503 waits ``min(Retry-After, --backoff-max-s)`` before its next request, as
a polite client would; the load stays high because there are more clients than queue places.

    EDGETTS_THREADS=1 python tools/load_test_server.py --clients 8 --duration-s 120 --deadline-s 3
    python tools/load_test_server.py --clients 4 --serve-args "--ray local --replicas 2 --threads 1"

Only ever talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

QUESTIONS = [
    "A pen costs 3 dollars. How much do 7 pens cost?",
    "Tom has 12 apples and gives away 5. How many apples does he have left?",
    "What is 6 * 7?",
    "A train travels 60 km in 1 hour. How far does it travel in 3 hours?",
]


@dataclass
class Sample:
    status: int
    latency_s: float
    code: str | None = None  # OpenAI error code for non-200s
    cut_short: bool = False
    answered: bool = False  # a final answer was extracted
    queue_s: float = 0.0
    search_s: float = 0.0
    retry_after: float | None = None
    tokens: int = 0  # generated (usage.completion_tokens: every path's sampled tokens)


@dataclass
class Stats:
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sample: Sample) -> None:
        with self.lock:
            self.samples.append(sample)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(base: str, body: dict, timeout: float) -> Sample:
    """One chat completion; every outcome (200, 4xx/5xx, socket error) becomes a Sample."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}/v1/chat/completions", data=data, headers={"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            payload = json.loads(resp.read())
            info = payload["edgetts"]
            return Sample(
                200,
                time.perf_counter() - start,
                cut_short=info["cut_short"],
                answered=info["answer"] is not None,
                queue_s=info["queue_s"],
                search_s=info["search_s"],
                tokens=payload.get("usage", {}).get("completion_tokens", 0),
            )
    except urllib.error.HTTPError as err:
        latency = time.perf_counter() - start
        try:
            code = json.loads(err.read())["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = "unparsed"
        retry = err.headers.get("Retry-After")
        return Sample(err.code, latency, code=code, retry_after=float(retry) if retry else None)
    except OSError as err:
        return Sample(0, time.perf_counter() - start, code=type(err).__name__)


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def rss_mb(pid: int, key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of ``pid`` in MB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "edgetts.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-tokens",
        str(args.max_tokens),
        "--max-queue",
        str(args.max_queue),
        *shlex.split(args.serve_args),
    ]
    env = {**os.environ, "EDGETTS_THREADS": os.environ.get("EDGETTS_THREADS", "1")}
    log = open(args.server_log, "w")  # stays open as long as the server runs
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(base: str, proc: subprocess.Popen, timeout_s: float = 300) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}; see its log")
        try:
            status, health = get_json(f"{base}/health")
            if status == 200:
                return health
        except (OSError, ValueError):  # not up yet (a proxy in front may answer in plain text)
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become ready")


def client_loop(
    base: str,
    model: str,
    args: argparse.Namespace,
    stats: Stats,
    stop_at: float,
    budget: threading.Semaphore,
    index: int,
) -> None:
    i = index
    while time.monotonic() < stop_at and budget.acquire(blocking=False):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "strategy": args.strategy,
            "n": args.n,
            "deadline_s": args.deadline_s or None,
            "max_tokens": args.max_tokens,
            "seed": i,
        }
        sample = post(base, body, timeout=args.deadline_s * 10 + 30 if args.deadline_s else 900)
        stats.add(sample)
        i += args.clients
        if sample.status == 503:
            time.sleep(min(sample.retry_after or 1.0, args.backoff_max_s))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=120)
    parser.add_argument("--max-requests", type=int, default=2000, help="Cap on load requests in all.")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=3.0,
        help="Each request's deadline_s; 0: none (no search is cut, none refused for time).",
    )
    parser.add_argument("--strategy", default="majority")
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-queue", type=int, default=4)
    parser.add_argument("--backoff-max-s", type=float, default=1.0)
    parser.add_argument("--after", type=int, default=2, help="Ordinary requests after the load.")
    parser.add_argument("--server-log", default="/tmp/edgetts-load-server.log")
    parser.add_argument(
        "--serve-args",
        default="",
        help="More `edgetts serve` arguments, e.g. '--threads 2' or "
        "'--ray local --replicas 2 --threads 1' (peak RSS is then the driver's only).",
    )
    parser.add_argument("--json", dest="json_out", default=None, help="Also write the report here.")
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(args, port)
    try:
        t0 = time.monotonic()
        wait_ready(base, proc)
        model = get_json(f"{base}/v1/models")[1]["data"][0]["id"]
        print(
            f"server ready in {time.monotonic() - t0:.1f} s ({model}); "
            f"RSS {rss_mb(proc.pid, 'VmRSS'):.0f} MB",
            file=sys.stderr,
        )

        stats, budget = Stats(), threading.Semaphore(args.max_requests)
        stop_at = time.monotonic() + args.duration_s
        threads = [
            threading.Thread(target=client_loop, args=(base, model, args, stats, stop_at, budget, k))
            for k in range(args.clients)
        ]
        load_start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        load_s = time.monotonic() - load_start

        # The server must be back to normal: idle, healthy, answering ordinary requests.
        while get_json(f"{base}/health")[1]["running"] or get_json(f"{base}/health")[1]["queued"]:
            time.sleep(0.2)
        after = [
            post(
                base,
                {
                    "model": model,
                    "messages": [{"role": "user", "content": q}],
                    "strategy": "majority",
                    "n": 2,
                    "max_tokens": 64,
                },
                timeout=300,
            )
            for q in QUESTIONS[: args.after]
        ]
        health = get_json(f"{base}/health")
        peak_rss = rss_mb(proc.pid, "VmHWM")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            exit_code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_code = proc.wait()

    report = summarize(stats.samples, after, health, peak_rss, exit_code, load_s, args)
    print_table(report)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))


def summarize(
    samples: list[Sample],
    after: list[Sample],
    health: tuple[int, dict],
    peak_rss: float,
    exit_code: int,
    load_s: float,
    args: argparse.Namespace,
) -> dict:
    ok = [s for s in samples if s.status == 200]
    by_status: dict[str, int] = {}
    for s in samples:
        key = str(s.status) + (f" {s.code}" if s.code else "")
        by_status[key] = by_status.get(key, 0) + 1
    latencies = [s.latency_s for s in ok]
    return {
        "clients": args.clients,
        "duration_s": round(load_s, 1),
        "deadline_s": args.deadline_s,
        "strategy": f"{args.strategy} n={args.n}",
        "max_tokens": args.max_tokens,
        "serve_args": args.serve_args,
        "max_queue": args.max_queue,
        "requests": len(samples),
        "served_200": len(ok),
        "throughput_per_min": round(len(ok) / load_s * 60, 1) if load_s else 0.0,
        "with_answer": sum(s.answered for s in ok),
        "cut_short": sum(s.cut_short for s in ok),
        "status_counts": by_status,
        "count_503": sum(s.status == 503 for s in samples),
        "p50_latency_s": round(pct(latencies, 0.5), 2),
        "p95_latency_s": round(pct(latencies, 0.95), 2),
        "max_latency_s": round(max(latencies), 2) if latencies else None,
        "over_deadline": sum(lat > args.deadline_s for lat in latencies) if args.deadline_s else None,
        "p95_over_deadline_s": round(pct([lat - args.deadline_s for lat in latencies], 0.95), 2)
        if args.deadline_s
        else None,
        "p50_queue_s": round(pct([s.queue_s for s in ok], 0.5), 2),
        "p50_search_s": round(pct([s.search_s for s in ok], 0.5), 2),
        "p503_latency_ms": round(pct([s.latency_s for s in samples if s.status == 503], 0.5) * 1000, 1),
        "peak_rss_mb": round(peak_rss, 0),
        "after_load_ok": f"{sum(s.status == 200 and s.answered for s in after)}/{len(after)}",
        "after_load_latency_s": [round(s.latency_s, 2) for s in after],
        "health_after": health[1],
        "server_exit_code": exit_code,
    }


def print_table(report: dict) -> None:
    print("| metric | value |\n|---|---|")
    for key, value in report.items():
        print(f"| {key} | {json.dumps(value) if isinstance(value, dict | list) else value} |")


if __name__ == "__main__":
    main()
