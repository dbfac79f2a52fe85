"""Benchmark: the engine actor's serving path against raw ``LLM.chat``, in one process each, no Ray, no S3.

    python bench/serving_overhead.py [--requests 3000] [--profile] [--out bench/out]

Where the steady-state gap of ``bench/vs_run_batch.py`` (scenario 3) comes from, with
everything else taken away: the same chat requests (``max_tokens`` 32, temperature 0,
the tiny model, the warm engine's own vLLM flags) answered

1. by ``runner.engine.server.EngineServer`` (vLLM's own OpenAI serving code, as the
   runner's engine actor runs it) in this process, ``--chunk`` requests per call and
   ``--streams`` calls at once, as Ray Data's ask stage sends them;
2. by raw ``LLM.chat`` in a child process, all requests in one call.

For each: wall seconds, generated tokens/s, and the front end's CPU seconds per request
(this process's own CPU: request parsing, chat template, tokenizing, detokenizing,
response objects; vLLM's EngineCore and Worker processes are not in it). ``--profile``
prints cProfile's top functions of the serving run. Not a test: figures vary by machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_run_batch import MAX_TOKENS, MODEL, MODEL_DIR, PEER_ENV, REPO, requests, save_report  # noqa: E402

RAW = r"""
import json, resource, sys, time
from vllm import LLM, SamplingParams
path, model, engine = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
bodies = [json.loads(line)["body"] for line in open(path)]
llm = LLM(model=model, **engine)
params = SamplingParams(max_tokens=bodies[0]["max_tokens"], temperature=0, ignore_eos=True)
llm.chat([b["messages"] for b in bodies[:8]], params, use_tqdm=False)
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu, began = usage.ru_utime + usage.ru_stime, time.perf_counter()
out = llm.chat([b["messages"] for b in bodies], params, use_tqdm=False)
seconds = time.perf_counter() - began
usage = resource.getrusage(resource.RUSAGE_SELF)
print("RESULT " + json.dumps({"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime - cpu,
                              "tokens": sum(len(o.outputs[0].token_ids) for o in out)}), flush=True)
"""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def engine_setup() -> tuple[tuple[str, ...], dict[str, str], dict]:
    """The warm engine's vLLM flags and worker environment, and the same limits as ``LLM`` arguments."""
    from dropbatch.settings import Settings
    from runner.engine.flags import vllm_args, worker_env
    from runner.engine.limits import engine_limits

    engine = Settings.from_env({"DROPBATCH_MODEL": str(MODEL_DIR)}).engine
    limits = engine_limits(engine, device="cpu", gpu_memory_bytes=None)
    llm = {"dtype": engine.dtype, "max_model_len": engine.max_model_len, "enforce_eager": engine.enforce_eager,
           "scheduling_policy": engine.scheduling_policy, **limits}
    if engine.enable_prefix_caching is not None:
        llm["enable_prefix_caching"] = engine.enable_prefix_caching
    return vllm_args(engine, limits), worker_env(engine, "bench"), llm


async def serve(bodies: list[dict], args: argparse.Namespace, flags: tuple[str, ...], env: dict[str, str]) -> dict:
    import cProfile
    import pstats

    from runner.engine.server import CHAT, EngineServer, EngineSpec

    os.environ.update(env)
    server = EngineServer(EngineSpec(model=str(MODEL_DIR), served_name=MODEL, task="generate", cli_args=flags, env=env))
    await server.start()
    await server.probe()
    pairs = [(CHAT, json.dumps(body)) for body in bodies]
    calls = [pairs[i:i + args.chunk] for i in range(0, len(pairs), args.chunk)]
    streams = asyncio.Semaphore(args.streams)

    async def call(requests: list[tuple[str, str]]) -> int:
        async with streams:
            return sum(row["completion_tokens"] for row in await server.answer(requests))

    profile = cProfile.Profile() if args.profile else None
    cpu, began = cpu_seconds(), time.perf_counter()
    if profile:
        profile.enable()
    tokens = sum(await asyncio.gather(*(call(c) for c in calls)))
    if profile:
        profile.disable()
    seconds, cpu = time.perf_counter() - began, cpu_seconds() - cpu
    await server.shutdown()
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return {"seconds": seconds, "cpu": cpu, "tokens": tokens}


def figure(ours: dict, raw: dict, n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.2))
    names, colors = ["EngineServer", "raw LLM.chat"], ["#2a7", "#888"]
    left.bar(names, [r["tokens"] / r["seconds"] for r in (ours, raw)], color=colors)
    left.set_title("generated tok/s")
    right.bar(names, [r["cpu"] / n * 1000 for r in (ours, raw)], color=colors)
    right.set_title("front-end CPU ms / request")
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--chunk", type=int, default=500, help="requests per answer() call (a chunk)")
    parser.add_argument("--streams", type=int, default=4, help="calls at once (the runner's streams per engine)")
    parser.add_argument("--profile", action="store_true", help="cProfile the serving run (slows it down)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    from dropbatch.engine.tinymodel import build_tiny_model

    build_tiny_model(MODEL_DIR)
    bodies = [line["body"] for line in requests(args.requests, "overhead")]
    flags, env, llm = engine_setup()
    ours = asyncio.run(serve(bodies, args, flags, env))
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"serving-overhead-{os.getpid()}.jsonl"
    work.write_text("".join(json.dumps({"body": body}) + "\n" for body in bodies))
    try:
        proc = subprocess.run([sys.executable, "-c", RAW, str(work), str(MODEL_DIR), json.dumps(llm)], cwd=REPO,
                              env={**os.environ, **PEER_ENV, **env}, capture_output=True, text=True, check=True)
    finally:
        work.unlink()
    raw = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    n = len(bodies)
    print(f"\n{n} chat requests, max_tokens {MAX_TOKENS}, {os.cpu_count()} CPUs"
          f"{' (serving run under cProfile)' if args.profile else ''}:")
    print("| path | wall s | generated tok/s | front-end CPU ms per request |\n|---|---|---|---|")
    for name, r in (("EngineServer (vLLM's OpenAI serving)", ours), ("raw LLM.chat", raw)):
        print(f"| {name} | {r['seconds']:.1f} | {r['tokens'] / r['seconds']:.0f} | {r['cpu'] / n * 1000:.2f} |")
    print(f"\nserving vs raw: {ours['tokens'] / ours['seconds'] / (raw['tokens'] / raw['seconds']):.2f}× the tokens/s, "
          f"{ours['cpu'] / max(raw['cpu'], 1e-9):.1f}× the front-end CPU")
    save_report("serving_overhead", {"requests": n, "serving": ours, "raw": raw}, figure(ours, raw, n), args.out, False)
    sys.stdout.flush()
    os._exit(0)  # the serving objects still hold vLLM's stopped AsyncLLM, whose finalizer fails at interpreter exit


if __name__ == "__main__":
    main()
