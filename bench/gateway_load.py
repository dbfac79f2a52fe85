"""Benchmark: many concurrent OpenAI-SDK clients against a live gateway over a real S3 server (moto), on loopback.

    python bench/gateway_load.py [--seconds 30] [--clients 16] [--out bench/out]

Each client is a thread with its own ``OpenAI(base_url=..., api_key=..., max_retries=0)``
and its own tenant (enterprise tier, so its calls fit the rate limit): it uploads a
file and creates a batch, then for the rest of the time polls and lists (retrieve
batch, list batches, retrieve file, file content, list files) with an occasional new
file and batch, in a seeded order. One extra client holds a free-tier token and
polls as fast as it can: its 429s are the intended ones, counted separately. Any
other error is a failure (exit code 1).

The same load runs twice, side by side, against two gateway processes that differ
in one thing: the per-replica token cache (2 s, the default) and no cache (every
request looks its token up in the control bucket). Authentication is the one S3
round trip every route pays, and the cache is the only state a gateway replica
keeps, so this baseline says what that state buys per route.

Prints a table (requests/s, p50, p99 per route and configuration, 429s, errors) and
writes bench/out/gateway_load.{json,png}. Not a test: numbers vary with the machine
(2 cores here, shared by moto, the gateway and the clients).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from dropbatch.emulator import free_port, moto_server

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"token cache 2 s": 2.0, "no token cache": 0.0}
START_SECONDS = 30.0
# The polling mix of one client, by weight (creating is rarer than reading, as for a real client).
MIX = (
    ("GET /v1/batches/{id}", 40),
    ("GET /v1/batches", 15),
    ("GET /v1/files/{id}", 15),
    ("GET /v1/files/{id}/content", 10),
    ("GET /v1/files", 10),
    ("POST /v1/files", 5),
    ("POST /v1/batches", 5),
)
NOISY_PAUSE = 0.02  # the free-tier poller asks ~50 times a second; its tier allows 1


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_http(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                response.read()
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise SystemExit(f"{what} did not answer at {url} within {START_SECONDS:.0f} s")


# -- the gateway process (this file with --serve) -----------------------------------------


def serve(port: int, token_cache: float) -> None:
    import uvicorn

    from dropbatch.settings import Settings
    from gateway.app import create_app

    settings = Settings.from_env(os.environ)
    app = create_app(settings, token_cache_seconds=token_cache)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- the load ------------------------------------------------------------------------------


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    rate_limited: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    error_samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, route: str, seconds: float, outcome: str, detail: str = "") -> None:
        with self.lock:
            if outcome == "ok":
                self.latencies[route].append(seconds)
            elif outcome == "429":
                self.rate_limited[route] += 1
            else:
                self.errors[route] += 1
                if len(self.error_samples) < 5:
                    self.error_samples.append(f"{route}: {detail}")


def jsonl(client_id: int, n: int) -> bytes:
    lines = [
        {
            "custom_id": f"c{client_id}-{n}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "dropbatch-tiny",
                "messages": [{"role": "user", "content": f"hello {i}"}],
                "max_tokens": 8,
            },
        }
        for i in range(5)
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def client_loop(
    client_id: int, base_url: str, token: str, until: float, stats: Stats, *, noisy: bool, seed: int
) -> None:
    import openai
    from openai import OpenAI

    rng = random.Random(seed * 1000 + client_id)
    client = OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=30)
    files: list[str] = []
    batches: list[str] = []
    made = 0

    def call(route: str, fn):
        started = time.perf_counter()
        try:
            result = fn()
        except openai.RateLimitError:
            stats.record(route, 0.0, "429")
            return None
        except (openai.APIStatusError, openai.APIConnectionError, openai.APITimeoutError) as exc:
            stats.record(route, 0.0, "error", f"{type(exc).__name__}: {str(exc)[:200]}")
            return None
        stats.record(route, time.perf_counter() - started, "ok")
        return result

    def create_file_and_batch() -> None:
        nonlocal made
        made += 1
        file = call(
            "POST /v1/files",
            lambda: client.files.create(file=(f"in-{made}.jsonl", jsonl(client_id, made)), purpose="batch"),
        )
        if file is not None:
            files.append(file.id)
            batch = call(
                "POST /v1/batches",
                lambda: client.batches.create(
                    input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
                ),
            )
            if batch is not None:
                batches.append(batch.id)

    try:
        if noisy:
            while time.monotonic() < until:
                call("GET /v1/batches", lambda: client.batches.list(limit=5))
                time.sleep(NOISY_PAUSE)
            return
        create_file_and_batch()
        routes, weights = zip(*MIX, strict=True)
        while time.monotonic() < until:
            route = rng.choices(routes, weights)[0]
            if route in ("POST /v1/files", "POST /v1/batches") or not batches:
                create_file_and_batch()
            elif route == "GET /v1/batches/{id}":
                call(route, lambda: client.batches.retrieve(rng.choice(batches)))
            elif route == "GET /v1/batches":
                call(route, lambda: client.batches.list(limit=20))
            elif route == "GET /v1/files/{id}":
                call(route, lambda: client.files.retrieve(rng.choice(files)))
            elif route == "GET /v1/files/{id}/content":
                call(route, lambda: client.files.content(rng.choice(files)).read())
            else:
                call(route, lambda: client.files.list(limit=20))
    finally:
        client.close()


def run_load(base_url: str, tokens: list[str], noisy_token: str, seconds: float, seed: int) -> tuple[Stats, float]:
    stats = Stats()
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=client_loop, args=(i, base_url, token, until, stats), kwargs={"noisy": False, "seed": seed}
        )
        for i, token in enumerate(tokens)
    ]
    threads.append(
        threading.Thread(
            target=client_loop,
            args=(len(tokens), base_url, noisy_token, until, stats),
            kwargs={"noisy": True, "seed": seed},
        )
    )
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return stats, time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(stats: Stats, wall: float) -> dict:
    routes = sorted(set(stats.latencies) | set(stats.rate_limited) | set(stats.errors))
    rows = {}
    for route in routes:
        lat = stats.latencies.get(route, [])
        rows[route] = {
            "ok": len(lat),
            "per_second": len(lat) / wall,
            "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000,
            "rate_limited": stats.rate_limited.get(route, 0),
            "errors": stats.errors.get(route, 0),
        }
    ok = sum(r["ok"] for r in rows.values())
    return {
        "wall_seconds": wall,
        "routes": rows,
        "total_ok": ok,
        "total_per_second": ok / wall,
        "rate_limited": sum(stats.rate_limited.values()),
        "errors": sum(stats.errors.values()),
        "error_samples": stats.error_samples,
    }


def print_table(results: dict[str, dict]) -> None:
    header = f"{'route':<28} {'configuration':<16} {'ok':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'429':>6} {'errors':>6}"
    print(header)
    print("-" * len(header))
    routes = sorted({route for result in results.values() for route in result["routes"]})
    for route in routes:
        for name, result in results.items():
            row = result["routes"].get(route)
            if row is None:
                continue
            print(
                f"{route:<28} {name:<16} {row['ok']:>7} {row['per_second']:>8.1f} {row['p50_ms']:>8.1f} "
                f"{row['p99_ms']:>8.1f} {row['rate_limited']:>6} {row['errors']:>6}"
            )
    print("-" * len(header))
    for name, result in results.items():
        print(
            f"{'all routes':<28} {name:<16} {result['total_ok']:>7} {result['total_per_second']:>8.1f} "
            f"{'':>8} {'':>8} {result['rate_limited']:>6} {result['errors']:>6}"
        )


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routes = sorted(
        {route for result in results.values() for route in result["routes"] if result["routes"][route]["ok"]}
    )
    names = list(results)
    fig, (ax_lat, ax_rate) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        rows = results[name]["routes"]
        xs = [j + i * width for j in range(len(routes))]
        p50 = [rows.get(r, {}).get("p50_ms", 0) for r in routes]
        p99 = [rows.get(r, {}).get("p99_ms", 0) for r in routes]
        bars = ax_lat.bar(xs, p99, width, alpha=0.35, label=f"{name} p99")
        ax_lat.bar(xs, p50, width, color=bars.patches[0].get_facecolor()[:3], label=f"{name} p50")
    ax_lat.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(routes))])
    ax_lat.set_xticklabels(routes, rotation=30, ha="right", fontsize=8)
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.set_title("p50 (solid) and p99 (light) per route")
    ax_lat.legend(fontsize=8)
    ax_rate.bar(names, [results[n]["total_per_second"] for n in names], color=["tab:blue", "tab:orange"][: len(names)])
    ax_rate.set_ylabel("successful requests / s")
    ax_rate.set_title("throughput")
    fig.suptitle(
        f"gateway under {results[names[0]]['clients']} OpenAI-SDK clients, {results[names[0]]['seconds']:.0f} s each"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- orchestration -------------------------------------------------------------------------


def bench(seconds: float, clients: int, out: Path, seed: int) -> int:
    from dropbatch.bootstrap import bootstrap
    from dropbatch.context import Context
    from dropbatch.settings import Settings

    procs: list[subprocess.Popen] = []
    with ExitStack() as resources:
        endpoint = resources.enter_context(moto_server())
        resources.callback(_stop_all, procs)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DROPBATCH_", "AWS_"))},
            "DROPBATCH_S3_ENDPOINT": endpoint,
            "DROPBATCH_ACCESS_KEY_ID": "test",
            "DROPBATCH_SECRET_ACCESS_KEY": "test",
            "DROPBATCH_REGION": "us-east-1",
            "DROPBATCH_LOG_LEVEL": "WARNING",
        }
        settings = Settings.from_env(env)
        bootstrap(settings.storage)
        ctx = Context.from_settings(settings)
        tokens: dict[str, list[str]] = {}
        noisy: dict[str, str] = {}
        for config in CONFIGS:  # fresh tenants per configuration: neither run sees the other's objects
            tag = "c" if CONFIGS[config] else "n"
            tokens[config] = []
            for i in range(clients):
                ctx.tenants.create(f"load-{tag}{i}", "enterprise")
                tokens[config].append(ctx.tokens.create(f"load-{tag}{i}").token)
            ctx.tenants.create(f"noisy-{tag}", "free")
            noisy[config] = ctx.tokens.create(f"noisy-{tag}").token

        results: dict[str, dict] = {}
        for config, cache in CONFIGS.items():
            port = free_port()
            gateway = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--serve", str(port), "--token-cache", str(cache)],
                env=env,
                cwd=REPO,
            )
            procs.append(gateway)
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/health", gateway, f"gateway ({config})")
            stats, wall = run_load(url + "/v1", tokens[config], noisy[config], seconds, seed)
            gateway.terminate()
            gateway.wait(timeout=30)
            results[config] = {
                **summarize(stats, wall),
                "clients": clients,
                "seconds": seconds,
                "token_cache_seconds": cache,
            }
    print_table(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway_load.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / "gateway_load.png")
    print(f"\nwrote {out / 'gateway_load.json'} and {out / 'gateway_load.png'}")
    unintended = sum(r["errors"] for r in results.values())
    for name, result in results.items():
        for sample in result["error_samples"]:
            print(f"error ({name}): {sample}", file=sys.stderr)
        if not result["rate_limited"]:
            print(f"note ({name}): the free-tier poller was never rate limited", file=sys.stderr)
    return 1 if unintended else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="load duration per configuration")
    parser.add_argument("--clients", type=int, default=16, help="concurrent SDK clients (plus one free-tier poller)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--token-cache", type=float, default=2.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.token_cache)
        return 0
    return bench(args.seconds, args.clients, args.out, args.seed)


if __name__ == "__main__":
    sys.exit(main())
