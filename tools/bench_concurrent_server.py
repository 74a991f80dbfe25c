"""Serial against batched server engine, side by side in one run: aggregate tok/s, p50/p95 latency.

Starts two ``edgetts serve`` processes on loopback with the same model and threads: ``serial``
(``--concurrent 1``: one search at a time, the engine before continuous batching) and
``batched`` (``--concurrent C``: C searches share one decode loop). For each client count, each
round runs the same closed load against each server in turn, alternating which goes first, so
the machine's other load hits both alike: every client sends ceil(``--requests`` / clients) chat
completions back to back (at least one) (majority@n, no deadline, ``--max-tokens``), and the round measures

* aggregate generated tok/s: the completion tokens of all answers / the wall time from the
  first request to the last answer,
* p50 / p95 latency of the requests, and the server's CPU seconds over the round.

At the end each server's peak RSS is printed beside the scheduler's estimate for its policy
(``/health``: ``peak_rss_mb``, ``memory_estimate_mb``).

The table shows medians over ``--rounds`` and the ratios batched / serial.

    EDGETTS_THREADS=1 python tools/bench_concurrent_server.py --clients 1 4 8 --rounds 3

Only ever talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test_server import QUESTIONS, Sample, free_port, get_json, pct, post, start_server, wait_ready  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def closed_load(base: str, model: str, args: argparse.Namespace, clients: int, round_no: int) -> dict:
    """``clients`` clients, each sending its requests back to back; the round's figures."""
    samples: list[Sample] = []
    lock = threading.Lock()

    per_client = max(1, math.ceil(args.requests / clients))

    def client(k: int) -> None:
        for r in range(per_client):
            i = k + clients * r
            body = {
                "model": model,
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                "strategy": "majority",
                "n": args.n,
                "max_tokens": args.max_tokens,
                "seed": 1000 * round_no + i,
            }
            sample = post(base, body, timeout=3600)
            with lock:
                samples.append(sample)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall_s = time.perf_counter() - start
    ok = [s for s in samples if s.status == 200]
    latencies = [s.latency_s for s in ok]
    return {
        "tok_s": sum(s.tokens for s in ok) / wall_s,
        "p50_s": pct(latencies, 0.5),
        "p95_s": pct(latencies, 0.95),
        "ok": len(ok),
        "failed": len(samples) - len(ok),
        "tokens": sum(s.tokens for s in ok),
        "wall_s": wall_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--requests", type=int, default=4, help="Requests per configuration, at least one per client."
    )
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--concurrent", type=int, default=8, help="The batched server's --concurrent.")
    parser.add_argument("--serve-args", default="", help="More `edgetts serve` arguments, for both servers.")
    args = parser.parse_args()

    servers = {}
    for name, concurrent in (("serial", 1), ("batched", args.concurrent)):
        port = free_port()
        opts = argparse.Namespace(
            max_tokens=args.max_tokens,
            max_queue=max(args.clients),  # every client's request waits: no 503 in a closed load
            serve_args=f"--concurrent {concurrent} {args.serve_args}",
            server_log=f"/tmp/edgetts-bench-{name}.log",
        )
        servers[name] = (f"http://127.0.0.1:{port}", start_server(opts, port))
    try:
        for base, proc in servers.values():
            wait_ready(base, proc)
        model = get_json(f"{next(iter(servers.values()))[0]}/v1/models")[1]["data"][0]["id"]
        rows: dict[tuple[int, str], list[dict]] = {}
        order = list(servers)
        for round_no in range(args.rounds):
            for clients in args.clients:
                for name in order:
                    base, proc = servers[name]
                    cpu_before = cpu_s(proc.pid)
                    figures = closed_load(base, model, args, clients, round_no)
                    figures["cpu_s"] = cpu_s(proc.pid) - cpu_before
                    rows.setdefault((clients, name), []).append(figures)
                    print(
                        f"round {round_no + 1} clients {clients} {name}: "
                        + ", ".join(
                            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
                        ),
                        file=sys.stderr,
                        flush=True,
                    )
                order.reverse()  # alternate who goes first
        memory = {name: get_json(f"{base}/health")[1] for name, (base, _) in servers.items()}
    finally:
        for _, proc in servers.values():
            proc.send_signal(signal.SIGINT)
        for _, proc in servers.values():
            proc.wait(timeout=60)
    print_table(rows, args)
    for name, health in memory.items():
        rss, estimate = health["peak_rss_mb"], health["memory_estimate_mb"]
        print(
            f"{name}: peak RSS {rss:.0f} MB, scheduler's estimate {estimate:.0f} MB "
            f"({rss / estimate - 1:+.0%})"
        )


def print_table(rows: dict[tuple[int, str], list[dict]], args: argparse.Namespace) -> None:
    def med(clients: int, name: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[clients, name])

    print(
        f"majority@{args.n}, max_tokens {args.max_tokens}, >= {args.requests} requests (>= 1 per client), "
        f"medians of {args.rounds} rounds; batched = --concurrent {args.concurrent}"
    )
    print(
        "| clients | serial tok/s | batched tok/s | ratio | serial p50 s | batched p50 s | serial p95 s "
        "| batched p95 s | p95 ratio | serial CPU s | batched CPU s | failed |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for clients in args.clients:
        s_tok, b_tok = med(clients, "serial", "tok_s"), med(clients, "batched", "tok_s")
        s_p95, b_p95 = med(clients, "serial", "p95_s"), med(clients, "batched", "p95_s")
        failed = sum(r["failed"] for name in ("serial", "batched") for r in rows[clients, name])
        print(
            f"| {clients} | {s_tok:.1f} | {b_tok:.1f} | {b_tok / s_tok:.2f}x "
            f"| {med(clients, 'serial', 'p50_s'):.1f} | {med(clients, 'batched', 'p50_s'):.1f} "
            f"| {s_p95:.1f} | {b_p95:.1f} | {b_p95 / s_p95:.2f} "
            f"| {med(clients, 'serial', 'cpu_s'):.0f} | {med(clients, 'batched', 'cpu_s'):.0f} | {failed} |"
        )


if __name__ == "__main__":
    main()
