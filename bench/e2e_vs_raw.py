"""Benchmark: the full drop-box path against raw vLLM, same requests, same machine, one run.

    python bench/e2e_vs_raw.py [--n 2000] [--max-tokens 32] [--out bench/out]

(a) raw   — ``vllm.LLM(...).chat(...)`` on the N conversations, in a fresh process
            (import + engine load + generation), the floor any wrapper pays.
(b) dropbox — what a client sees: the JSONL and a signed manifest uploaded to a real
            S3 server (moto, over HTTP), the watcher admits, the runner streams it
            through ray.data.llm + vLLM, results land in the outbox. Timed from the
            first upload byte to summary.json in the outbox.

Prints a table (wall seconds, generated tokens, tokens/s, ratio) and writes a bar
plot. Not a test: numbers vary with the machine; the ratio is what to watch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / ".dropbatch" / "models" / "dropbatch-tiny"
MODEL_NAME = "dropbatch-tiny"

RAW_SCRIPT = r"""
import json, os, sys, time


def main():
    t0 = time.perf_counter()
    from vllm import LLM, SamplingParams

    t_import = time.perf_counter()
    model, path, max_tokens, max_model_len = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    conversations = [json.loads(line)["body"]["messages"] for line in open(path)]
    llm = LLM(model=model, dtype="bfloat16", max_model_len=max_model_len, enforce_eager=True)
    t_load = time.perf_counter()
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    outputs = llm.chat(conversations, params, use_tqdm=False)
    t_done = time.perf_counter()
    print("RESULT " + json.dumps({
        "wall": t_done - t0, "import": t_import - t0, "load": t_load - t_import, "generate": t_done - t_load,
        "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outputs), "requests": len(outputs),
    }), flush=True)


if __name__ == "__main__":  # vLLM on CPU uses the spawn start method
    main()
"""


def requests(n: int, max_tokens: int) -> list[dict]:
    return [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL_NAME,
                "messages": [{"role": "user", "content": f"Tell me something about the number {i}."}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        }
        for i in range(n)
    ]


def run_raw(path: Path, max_tokens: int, max_model_len: int) -> dict:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    script = path.parent / "raw_vllm.py"
    script.write_text(RAW_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(MODEL_DIR), str(path), str(max_tokens), str(max_model_len)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(result.removeprefix("RESULT "))


def run_dropbox(path: Path, n: int) -> dict:
    """Upload → admit → engine → outbox, with the real services' code over a real S3 server."""
    import threading

    from dropbatch.bootstrap import bootstrap
    from dropbatch.context import Context
    from dropbatch.emulator import moto_server
    from dropbatch.errors import NotFound
    from dropbatch.settings import Settings
    from dropbatch.storage.keys import JobRef
    from manifests import build_manifest, dumps, sign
    from runner.engine import build_engine
    from runner.service import Runner
    from watcher.service import Watcher

    with moto_server() as endpoint:
        settings = Settings.from_env(
            {"DROPBATCH_S3_ENDPOINT": endpoint, "DROPBATCH_MODEL": str(MODEL_DIR), "DROPBATCH_POLL_SECONDS": "0.2"}
        )
        bootstrap(settings.storage)
        ctx = Context.from_settings(settings)
        ctx.tenants.create("bench", "enterprise")
        key = ctx.tenants.create_signing_key("bench")
        stop = threading.Event()
        with build_engine(settings) as engine:
            watcher = threading.Thread(target=Watcher(ctx).run, args=(stop,), daemon=True)
            runner = threading.Thread(target=Runner(ctx, engine).run, args=(stop,), daemon=True)
            watcher.start()
            runner.start()
            t0 = time.perf_counter()
            ctx.store.upload_stream(settings.storage.inbox_bucket, "bench/job/input.jsonl", iter([path.read_bytes()]))
            manifest = build_manifest(
                [path], tenant="bench", job="job", key_id=key.key_id, endpoint="/v1/chat/completions",
                model=MODEL_NAME, created_at=int(time.time()), input_keys=["bench/job/input.jsonl"],
            )
            ctx.store.put(settings.storage.inbox_bucket, "bench/job/manifest.json", dumps(sign(manifest, key.secret)))
            while True:
                try:
                    record = ctx.batches.for_job(JobRef("bench", "job"))
                    if record.status.is_terminal:
                        break
                except NotFound:
                    pass  # not admitted yet
                time.sleep(0.2)
            wall = time.perf_counter() - t0
            stop.set()
            runner.join(timeout=60)
            watcher.join(timeout=10)
        started = record.in_progress_at or record.created_at
        return {
            "wall": wall,
            "engine_window": (record.completed_at or 0) - started,
            "generated_tokens": record.usage.output_tokens if record.usage else 0,
            "requests": record.request_counts.completed,
            "failed": record.request_counts.failed,
            "status": record.status.value,
        }


def plot(rows: list[tuple[str, dict]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _ in rows]
    walls = [r["wall"] for _, r in rows]
    rates = [r["generated_tokens"] / r["wall"] for _, r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.bar(names, walls, color=["#888", "#2a7"])
    ax1.set_ylabel("wall seconds (lower is better)")
    ax2.bar(names, rates, color=["#888", "#2a7"])
    ax2.set_ylabel("generated tokens / s (higher is better)")
    fig.suptitle(f"{rows[0][1]['requests']} chat requests, tiny model, vLLM CPU")
    fig.tight_layout()
    path = out / "e2e_vs_raw.png"
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    from dropbatch.engine.tinymodel import build_tiny_model

    build_tiny_model(MODEL_DIR)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "requests.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in requests(args.n, args.max_tokens)))
        raw = run_raw(path, args.max_tokens, args.max_model_len)
        dropbox = run_dropbox(path, args.n)
    rows = [("raw vLLM.chat", raw), ("drop-box (S3 → Ray Data → vLLM → S3)", dropbox)]
    print(f"\n{args.n} chat requests, max_tokens {args.max_tokens}, model {MODEL_DIR.name}\n")
    print(f"{'path':<40} {'wall s':>8} {'gen tokens':>11} {'tokens/s':>9} {'vs raw':>7}")
    for name, r in rows:
        rate = r["generated_tokens"] / r["wall"]
        print(f"{name:<40} {r['wall']:8.1f} {r['generated_tokens']:11d} {rate:9.0f} {r['wall'] / raw['wall']:6.2f}x")
    print(
        f"\nraw breakdown: import {raw['import']:.1f}s, engine load {raw['load']:.1f}s, generate {raw['generate']:.1f}s"
    )
    print(f"drop-box: status {dropbox['status']}, {dropbox['requests']} completed, {dropbox['failed']} failed")
    print(f"plot: {plot(rows, args.out)}")
    (args.out / "e2e_vs_raw.json").write_text(json.dumps({"raw": raw, "dropbox": dropbox}, indent=2))


if __name__ == "__main__":
    main()
