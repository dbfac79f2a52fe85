"""Benchmark: dropbatch (stack up and idle, warm engine) against `vllm run-batch` and raw vLLM, one run.

    python bench/vs_run_batch.py [--scenarios 1,2,3,4] [--peer-runs 20] [--steady 20000]
                                 [--memory 5000,50000x4] [--out bench/out]

Same machine, same requests (chat, max_tokens 32, temperature 0, the tiny model):
1. one 2000-request job, first upload → every result in the outbox, against
   ``python -m vllm.entrypoints.openai.run_batch`` on the same file (its start-up included,
   as its users run it);
2. 20 jobs × 50 requests from 5 tenants uploaded 1 s apart, first upload → last result,
   against 20 runs of run_batch (``--peer-runs K`` times K runs and scales to 20, said so
   in the table), and the median job's upload → results latency;
3. steady state: generated tokens/s on ``--steady`` requests against raw ``LLM.chat`` on
   the same requests, generation phase only (its engine already loaded), with the warm
   engine's own scheduler arguments (max_num_seqs, max_num_batched_tokens, policy);
   dropbatch's rate over its runner's pass (claimed → completed), and beside it over
   upload → completed;
4. peak RSS of the runner and everything under it (Ray, the engine actors, vLLM's
   processes), during one small job and then during several large jobs in a row.

dropbatch runs as users run it: `dropbatch up` (embedded moto S3, watcher, runner,
gateway), waited on until the runner's /ready says the engine answered its probe; jobs
are uploaded as input + signed manifest through the S3 API. Prints a table, writes
``vs_run_batch.json`` and ``vs_run_batch.png``. Not a test: figures vary by machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / ".dropbatch" / "models" / "dropbatch-tiny"
MODEL = "dropbatch-tiny"
MAX_TOKENS = 32
ENGINE_FLAGS = ["--dtype", "bfloat16", "--max-model-len", "512", "--enforce-eager"]
PEER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
            "TOKENIZERS_PARALLELISM": "false"}

RAW_SCRIPT = r"""
import json, sys, time


def main():
    from vllm import LLM, SamplingParams

    path, model, max_tokens, engine = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    conversations = [json.loads(line)["body"]["messages"] for line in open(path)]
    llm = LLM(model=model, dtype="bfloat16", max_model_len=512, enforce_eager=True, **engine)
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    llm.chat(conversations[:8], params, use_tqdm=False)  # warm
    began = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False)
    seconds = time.perf_counter() - began
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    print("RESULT " + json.dumps({"seconds": seconds, "generated_tokens": tokens}), flush=True)


if __name__ == "__main__":  # vLLM on CPU uses the spawn start method
    main()
"""


def requests(n: int, tag: str) -> list[dict]:
    return [
        {
            "custom_id": f"{tag}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Tell me something about {tag} number {i}."}],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "ignore_eos": True,
            },
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# -- the peers -----------------------------------------------------------------------


def run_batch(path: Path, out: Path) -> float:
    """Wall seconds of one `python -m vllm.entrypoints.openai.run_batch` on ``path``."""
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(path), "-o", str(out),
         "--model", str(MODEL_DIR), "--served-model-name", MODEL, *ENGINE_FLAGS],
        env={**os.environ, **PEER_ENV}, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - began


def raw_generation(path: Path, workdir: Path, engine: dict) -> dict:
    """Raw ``LLM.chat`` on ``path`` with ``engine``'s extra LLM arguments (the warm engine's own limits)."""
    script = workdir / "raw_vllm.py"
    script.write_text(RAW_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(path), str(MODEL_DIR), str(MAX_TOKENS), json.dumps(engine)],
                          env={**os.environ, **PEER_ENV}, capture_output=True, text=True, check=True)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


# -- dropbatch as users run it ---------------------------------------------------------


class Stack:
    """`dropbatch up` in a temporary home; jobs go in through the S3 API as the drop-box contract says."""

    def __init__(self, home: Path, endpoint: str, extra_env: dict[str, str] | None = None) -> None:
        from dropbatch.emulator import free_port

        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DROPBATCH_", "AWS_"))}
        ports = {name: str(free_port()) for name in ("GATEWAY", "WATCHER", "RUNNER")}
        self.env = {**env, "DROPBATCH_HOME": str(home), "DROPBATCH_MODEL": str(MODEL_DIR),
                    "DROPBATCH_S3_ENDPOINT": endpoint, "DROPBATCH_TIER_QUOTAS": "enterprise=10000000",
                    **{f"DROPBATCH_{name}_PORT": port for name, port in ports.items()}, **(extra_env or {})}
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "dropbatch"), "up"], env=self.env,
                                     stdout=(home / "up.out").open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.info = self._wait_ready()
        from dropbatch.context import Context
        from dropbatch.settings import Settings

        self.ctx = Context.from_settings(Settings.from_env(self.env))
        self.tenants: dict[str, object] = {}

    def _wait_ready(self, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        state = self.home / "up.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"dropbatch up exited; see {self.home / 'up.out'}")
            if state.exists():
                info = json.loads(state.read_text())
                ready = info["metrics"]["runner"].replace("/metrics", "/ready")
                try:
                    with urllib.request.urlopen(ready, timeout=2) as response:
                        if response.status == 200:
                            return info
                except OSError:
                    pass
            time.sleep(0.5)
        raise SystemExit("the runner never became ready")

    def engine_args(self) -> dict:
        """The scheduler settings the warm engine runs with, as ``LLM(...)`` arguments: the raw peer gets
        the same, so the steady-state ratio measures the serving path and not a different batch size."""
        from dropbatch.settings import Settings
        from runner.engine.limits import engine_limits

        engine = Settings.from_env(self.env).engine
        limits = engine_limits(engine, device="cpu", gpu_memory_bytes=None)
        caching = {} if engine.enable_prefix_caching is None else {"enable_prefix_caching": engine.enable_prefix_caching}
        return {**limits, "scheduling_policy": engine.scheduling_policy, **caching}

    def runner_pid(self) -> int:
        return json.loads((self.home / "up.json").read_text())["services"]["runner"]

    def tenant(self, tenant: str, tier: str = "enterprise"):
        """The tenant's signing key, the tenant and key created on first use (an admin's step, not an upload's)."""
        if tenant not in self.tenants:
            self.ctx.tenants.create(tenant, tier)
            self.tenants[tenant] = self.ctx.tenants.create_signing_key(tenant)
        return self.tenants[tenant]

    def submit(self, tenant: str, job: str, lines: list[dict], tier: str = "enterprise"):
        from dropbatch.models import InputObject
        from dropbatch.storage.keys import JobRef
        from manifests import Manifest, dumps, sign

        key = self.tenant(tenant, tier)
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        input_key = f"{tenant}/{job}/input.jsonl"
        self.ctx.store.put(self.ctx.inbox, input_key, data)
        manifest = Manifest(
            tenant=tenant, job=job, key_id=key.key_id, endpoint="/v1/chat/completions", model=MODEL,
            created_at=int(time.time()), nonce=hashlib.sha256(f"{job}{time.time()}".encode()).hexdigest()[:24],
            inputs=[InputObject(key=input_key, size=len(data), sha256=hashlib.sha256(data).hexdigest())],
        )
        ref = JobRef(tenant, job)
        self.ctx.store.put(self.ctx.inbox, ref.manifest_key, dumps(sign(manifest, key.secret)))
        return ref

    def wait(self, ref, timeout: float = 3600):
        from dropbatch.errors import NotFound

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                record = self.ctx.batches.for_job(ref)
                if record.status.is_terminal:
                    return record
            except NotFound:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{ref} did not finish")

    def close(self) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


class PeakRss:
    """Samples the RSS of a process and all its descendants: the peak of the sum, and of each kind's sum.

    Kinds are ``CpuShare.KINDS`` (runner, Ray Data stages, Ray core, engine actor, vLLM's
    processes ...), so a growth shows which process grew.
    """

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self.peak_by_kind: dict[str, int] = {}
        self._kinds: dict[int, str] = {}
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self._stop.wait(0.5):
            total, by_kind = 0, {}
            for proc in [root, *root.children(recursive=True)]:
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                if proc.pid not in self._kinds:
                    self._kinds[proc.pid] = CpuShare.kind(proc)
                kind = self._kinds[proc.pid]
                by_kind[kind] = by_kind.get(kind, 0) + rss
                total += rss
            self.peak = max(self.peak, total)
            for kind, rss in by_kind.items():
                self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0), rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class CpuShare:
    """CPU seconds spent by each kind of process under this one while a scenario runs.

    The profile behind the steady-state ratio: on a CPU-only machine every CPU second
    the serving path, Ray Data, the runner or the S3 server takes is one vLLM's
    engine core does not get.
    """

    KINDS = (  # first match of the process title / command line wins
        ("vLLM engine (EngineCore + Worker)", ("VLLM::",)),
        ("engine actor (vLLM OpenAI serving)", ("EngineServer",)),
        ("raw LLM.chat (driver and its in-process engine)", ("raw_vllm.py",)),
        ("Ray Data stages", ("ray::MapBatches", "ray::FlatMap", "ray::IDLE", "default_worker.py")),
        ("Ray core (gcs, raylet, Ray Data's own actors)", ("gcs_server", "raylet", "ray::_", "ray/dashboard",
                                                          "ray/_private", "log_monitor")),
        ("S3 server (moto)", ("moto.server",)),
        ("runner (driver)", ("runner",)),
        ("watcher, gateway, up", ("watcher", "gateway", " up")),
    )

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.seconds: dict[str, float] = {}
        self._first: dict[int, tuple[str, float]] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.wall = 0.0

    @classmethod
    def kind(cls, proc) -> str:
        try:
            title = f"{proc.name()} {' '.join(proc.cmdline())}"
        except Exception:  # noqa: BLE001 - gone or not ours
            return "other"
        for kind, marks in cls.KINDS:
            if any(mark in title for mark in marks):
                return kind
        return "other"

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while True:
            for proc in me.children(recursive=True):
                try:
                    times = proc.cpu_times()
                    used = times.user + times.system
                except psutil.Error:
                    continue
                if proc.pid not in self._first:
                    self._first[proc.pid] = (self.kind(proc), used)
                elif self._first[proc.pid][0] == "other":  # a spawned process names itself after it starts
                    self._first[proc.pid] = (self.kind(proc), self._first[proc.pid][1])
                self._last[proc.pid] = used
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> CpuShare:
        self._began = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.wall = time.perf_counter() - self._began
        for pid, (kind, first) in self._first.items():
            self.seconds[kind] = self.seconds.get(kind, 0.0) + self._last[pid] - first


# -- scenarios -------------------------------------------------------------------------


def one_job(stack: Stack, work: Path, results: dict) -> None:
    lines = requests(2000, "one")
    began = time.perf_counter()
    record = stack.wait(stack.submit("bench-one", f"one-{int(time.time())}", lines))
    dropbatch = time.perf_counter() - began
    peer = run_batch(write_jsonl(work / "one.jsonl", lines), work / "one.out.jsonl")
    results["one_2000"] = {"dropbatch_s": dropbatch, "run_batch_s": peer, "speedup": peer / dropbatch,
                           "completed": record.request_counts.completed}


def many_jobs(stack: Stack, work: Path, results: dict, peer_runs: int) -> None:
    from timeline import STEPS, Timeline, median_breakdown

    began = time.perf_counter()
    with Timeline(stack.ctx) as timeline:  # times each job from its own upload, while the rest upload
        for i in range(20):
            ref = stack.submit(f"bench-t{i % 5}", f"many-{i}-{int(time.time())}", requests(50, f"m{i}"))
            timeline.add(ref, time.perf_counter())
            time.sleep(1.0)
        jobs = timeline.wait(20)
    dropbatch = max(job.seen["results"] for job in jobs) - began
    path = write_jsonl(work / "small.jsonl", requests(50, "small"))
    peer_each = [run_batch(path, work / "small.out.jsonl") for _ in range(peer_runs)]
    peer = statistics.mean(peer_each) * 20
    latencies = [job.latency for job in jobs]
    results["twenty_x50"] = {"dropbatch_s": dropbatch, "run_batch_s": peer, "speedup": peer / dropbatch,
                             "peer_runs_measured": peer_runs, "median_latency_s": statistics.median(latencies),
                             "max_latency_s": max(latencies), "latencies_s": latencies, "steps": list(STEPS),
                             **median_breakdown(jobs)}


def steady(stack: Stack, work: Path, results: dict, n: int) -> None:
    """Generated tokens/s of one big job, against raw ``LLM.chat``'s generation phase on the same requests.

    Two rates for dropbatch: upload → completed (what a user waits for, including the upload and the
    watcher's validation of every line) and claimed → completed (the runner's pass: the phase that
    compares with raw vLLM's generation, engine already loaded, plus settling the results).
    """
    from timeline import Timeline

    lines = requests(n, "steady")
    with CpuShare() as ours_cpu, Timeline(stack.ctx) as timeline:
        began = time.perf_counter()
        timeline.add(stack.submit("bench-steady", f"steady-{int(time.time())}", lines), began)
        [job] = timeline.wait(1)
    tokens = job.record.usage.output_tokens if job.record.usage else 0
    seconds, running = job.seen["completed"] - began, job.seen["completed"] - job.seen["claimed"]
    with CpuShare() as raw_cpu:  # includes the raw run's model load: shares, not seconds, compare
        raw = raw_generation(write_jsonl(work / "steady.jsonl", lines), work, stack.engine_args())
    ours, theirs = tokens / running, raw["generated_tokens"] / raw["seconds"]
    results["steady"] = {"requests": n, "dropbatch_tokens_per_s": ours, "raw_tokens_per_s": theirs,
                         "ratio": ours / theirs, "end_to_end_tokens_per_s": tokens / seconds,
                         "end_to_end_ratio": tokens / seconds / theirs, "dropbatch_s": seconds,
                         "claimed_to_completed_s": running, "upload_to_claimed_s": job.seen["claimed"] - began,
                         "raw_generate_s": raw["seconds"], "cpu_seconds": ours_cpu.seconds,
                         "cpu_wall_s": ours_cpu.wall, "raw_cpu_seconds": raw_cpu.seconds,
                         "raw_cpu_wall_s": raw_cpu.wall}


def memory(stack: Stack, results: dict, small: int, large: int, repeats: int) -> None:
    pid = stack.runner_pid()
    with PeakRss(pid) as first:
        stack.wait(stack.submit("bench-mem", f"mem-small-{int(time.time())}", requests(small, "mem-s")))
    each: list[PeakRss] = []  # one per large job: a peak that climbs job after job is a leak, a plateau is not
    for i in range(repeats):
        with PeakRss(pid) as job:
            stack.wait(stack.submit("bench-mem", f"mem-large-{i}-{int(time.time())}", requests(large, f"mem-l{i}")))
        each.append(job)
    second = PeakRss(pid)
    second.peak = max(job.peak for job in each)
    second.peak_by_kind = {kind: max(job.peak_by_kind.get(kind, 0) for job in each)
                           for kind in {k for job in each for k in job.peak_by_kind}}
    results["memory"] = {"small_lines": small, "large_lines": large, "large_jobs": repeats,
                         "peak_small_mib": first.peak / 2**20, "peak_large_mib": second.peak / 2**20,
                         "growth": second.peak / first.peak - 1,
                         "peak_small_by_kind_mib": {k: v / 2**20 for k, v in first.peak_by_kind.items()},
                         "peak_large_by_kind_mib": {k: v / 2**20 for k, v in second.peak_by_kind.items()},
                         "peak_each_large_by_kind_mib": [{k: v / 2**20 for k, v in job.peak_by_kind.items()}
                                                         for job in each]}


# -- report ----------------------------------------------------------------------------


def save_report(name: str, results, fig, out: Path, docs: bool) -> Path:
    """``<out>/<name>.json`` and ``.png`` (the plot also to ``docs/`` when asked); the plot's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110)
    if docs:
        (REPO / "docs" / f"{name}.png").write_bytes(path.read_bytes())
    print(f"plot: {path}")
    return path



def report(results: dict, out: Path) -> None:
    print("\n| scenario | dropbatch | peer | dropbatch vs peer | goal |\n|---|---|---|---|---|")
    if "one_2000" in results:
        r = results["one_2000"]
        print(f"| 1 job × 2000 | {r['dropbatch_s']:.1f} s | run_batch {r['run_batch_s']:.1f} s | "
              f"{r['speedup']:.2f}× faster | ≥ 2× |")
    if "twenty_x50" in results:
        r = results["twenty_x50"]
        scaled = "" if r["peer_runs_measured"] == 20 else f" ({r['peer_runs_measured']} runs × 20/{r['peer_runs_measured']})"
        print(f"| 20 jobs × 50, 1 s apart | {r['dropbatch_s']:.1f} s, median job {r['median_latency_s']:.1f} s | "
              f"20 × run_batch {r['run_batch_s']:.0f} s{scaled} | {r['speedup']:.1f}× faster | ≥ 10×, median < 5 s |")
    if "steady" in results:
        r = results["steady"]
        print(f"| steady state, {r['requests']} requests (claimed → completed, {r['claimed_to_completed_s']:.1f} s) | "
              f"{r['dropbatch_tokens_per_s']:.0f} tok/s | raw LLM.chat {r['raw_tokens_per_s']:.0f} tok/s "
              f"({r['raw_generate_s']:.1f} s) | {r['ratio']:.2f}× | ≥ 0.8× |")
        print(f"| the same job, upload → completed ({r['dropbatch_s']:.1f} s, of which upload → claimed "
              f"{r['upload_to_claimed_s']:.1f} s) | {r['end_to_end_tokens_per_s']:.0f} tok/s | "
              f"raw LLM.chat {r['raw_tokens_per_s']:.0f} tok/s | {r['end_to_end_ratio']:.2f}× | |")
    if "memory" in results:
        r = results["memory"]
        print(f"| peak RSS, runner + engine | {r['small_lines']}-line job {r['peak_small_mib']:.0f} MiB | "
              f"{r['large_jobs']} × {r['large_lines']}-line jobs {r['peak_large_mib']:.0f} MiB | "
              f"{r['growth'] * 100:+.1f}% | within 10% |")
    if "twenty_x50" in results:
        from timeline import STEP_NAMES

        r = results["twenty_x50"]
        print(f"\nWhere a job's time went in scenario 2, upload → results (the median job, "
              f"{r['median_job']['latency_s']:.1f} s, and each step's median over the 20 jobs):")
        print("| step | median job | step median |\n|---|---|---|")
        for step in r["steps"]:
            print(f"| {STEP_NAMES[step]} | {r['median_job'][step + '_s']:.2f} s | "
                  f"{r['step_medians'][step + '_s']:.2f} s |")
    if "memory" in results:
        r = results["memory"]
        print(f"\nPeak RSS by process kind (each kind's processes summed; {r['small_lines']}-line job, then "
              f"{r['large_jobs']} × {r['large_lines']}-line jobs):")
        small, large, each = r["peak_small_by_kind_mib"], r["peak_large_by_kind_mib"], r["peak_each_large_by_kind_mib"]
        jobs = " | ".join(f"large job {i + 1} MiB" for i in range(len(each)))
        print(f"| process | small job MiB | {jobs} | growth |\n|---|---|{'---|' * len(each)}---|")
        for kind in sorted(set(small) | set(large), key=lambda k: -large.get(k, 0)):
            before, after = small.get(kind, 0.0), large.get(kind, 0.0)
            growth = f"{(after / before - 1) * 100:+.1f}%" if before else "new"
            peaks = " | ".join(f"{job.get(kind, 0.0):.0f}" for job in each)
            print(f"| {kind} | {before:.0f} | {peaks} | {growth} |")
    if "steady" in results:
        r = results["steady"]
        print(f"\nWhere the CPU went during the steady-state run ({r['cpu_wall_s']:.0f} s wall, "
              f"{os.cpu_count()} CPUs; raw LLM.chat run for comparison, its load included):")
        print("| process | dropbatch CPU s | share | raw CPU s | share |\n|---|---|---|---|---|")
        ours_total = sum(r["cpu_seconds"].values()) or 1.0
        raw_total = sum(r["raw_cpu_seconds"].values()) or 1.0
        for kind in sorted(set(r["cpu_seconds"]) | set(r["raw_cpu_seconds"]), key=lambda k: -r["cpu_seconds"].get(k, 0)):
            mine, theirs = r["cpu_seconds"].get(kind, 0.0), r["raw_cpu_seconds"].get(kind, 0.0)
            print(f"| {kind} | {mine:.0f} | {mine / ours_total:.0%} | {theirs:.0f} | {theirs / raw_total:.0%} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "vs_run_batch.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nplot: {plot(results, out)}")


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("one_2000", "twenty_x50", "steady", "memory") if k in results]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        r = results[key]
        if key == "one_2000":
            ax.bar(["dropbatch", "run_batch"], [r["dropbatch_s"], r["run_batch_s"]], color=["#2a7", "#888"])
            ax.set_title("1 job × 2000: wall s")
        elif key == "twenty_x50":
            ax.bar(["dropbatch", "20× run_batch"], [r["dropbatch_s"], r["run_batch_s"]], color=["#2a7", "#888"])
            ax.set_title("20 jobs × 50: wall s")
        elif key == "steady":
            ax.bar(["dropbatch\n(pass)", "dropbatch\n(upload →)", "raw\nLLM.chat"],
                   [r["dropbatch_tokens_per_s"], r["end_to_end_tokens_per_s"], r["raw_tokens_per_s"]],
                   color=["#2a7", "#7c9", "#888"])
            ax.set_title("steady state: generated tok/s")
        else:
            ax.bar(["1 small job", f"{r['large_jobs']} large jobs"], [r["peak_small_mib"], r["peak_large_mib"]],
                   color=["#888", "#2a7"])
            ax.set_title("peak RSS MiB (runner + engine)")
    fig.tight_layout()
    path = out / "vs_run_batch.png"
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="1,2,3,4")
    parser.add_argument("--peer-runs", type=int, default=20, help="run_batch runs measured for scenario 2")
    parser.add_argument("--steady", type=int, default=20_000)
    parser.add_argument("--memory", default="5000,50000x4", help="SMALL,LARGExREPEATS lines for scenario 4")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    from dropbatch.engine.tinymodel import build_tiny_model

    build_tiny_model(MODEL_DIR)
    chosen = set(args.scenarios.split(","))
    small, _, rest = args.memory.partition(",")
    large, _, repeats = rest.partition("x")
    results: dict = {}
    from dropbatch.emulator import moto_server

    with tempfile.TemporaryDirectory() as tmp, moto_server() as endpoint:
        work = Path(tmp)
        stack = Stack(work / "home", endpoint)
        try:
            if "1" in chosen:
                one_job(stack, work, results)
            if "2" in chosen:
                many_jobs(stack, work, results, args.peer_runs)
            if "4" in chosen:
                memory(stack, results, int(small), int(large), int(repeats or 1))
            if "3" in chosen:
                steady(stack, work, results, args.steady)
        finally:
            stack.close()
    report(results, args.out)


if __name__ == "__main__":
    main()
