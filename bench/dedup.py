"""Benchmark: a batch with 30% duplicate requests, deduplication on against off, one run.

    python bench/dedup.py [--lines 2000] [--duplicates 0.3] [--max-tokens 32] [--out bench/out]

The same warm engine (the tiny model on vLLM, started once, not timed) runs two
batches of ``--lines`` chat requests at temperature 0, of which ``--duplicates``
repeat an earlier line of the same batch: one admitted by a watcher with
``DROPBATCH_DEDUP=0``, one with the default (on). Each is timed from admission to
``completed``. The prompts of the two batches differ by a tag (same lengths), so
the second is not answered from the first's outbox. Checks that every custom_id
is answered once and that each copy carries its original's answer under its own
ids. Prints a table, writes ``dedup.json`` and ``dedup.png``. Not a test: figures
vary by machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / ".dropbatch" / "models" / "dropbatch-tiny"
MODEL = "dropbatch-tiny"
TENANT = "bench-dedup"


def batch_lines(n: int, share: float, tag: str, max_tokens: int, seed: int = 12) -> list[dict]:
    """``n`` lines; ``round(n * share)`` of them (spread at random) repeat an earlier distinct line."""
    rng = random.Random(seed)
    copies = set(rng.sample(range(1, n), round(n * share)))
    distinct: list[str] = []
    lines = []
    for i in range(n):
        if i in copies:
            prompt = rng.choice(distinct)
        else:
            prompt = f"[{tag}] Tell me something about item number {i}."
            distinct.append(prompt)
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0}
        lines.append({"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return lines


def submit(ctx, key, job: str, lines: list[dict]):
    from dropbatch.models import InputObject
    from dropbatch.storage.keys import JobRef
    from manifests import Manifest, dumps, sign

    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    input_key = f"{TENANT}/{job}/input.jsonl"
    ctx.store.put(ctx.inbox, input_key, data)
    manifest = Manifest(
        tenant=TENANT, job=job, key_id=key.key_id, endpoint="/v1/chat/completions", model=MODEL,
        created_at=int(time.time()), nonce=hashlib.sha256(f"{job}{time.time()}".encode()).hexdigest()[:24],
        inputs=[InputObject(key=input_key, size=len(data), sha256=hashlib.sha256(data).hexdigest())],
    )
    ref = JobRef(TENANT, job)
    ctx.store.put(ctx.inbox, ref.manifest_key, dumps(sign(manifest, key.secret)))
    return ref


class CountingEngine:
    """The warm engine, counting the result lines it answers (what the engine really ran)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.answered = 0

    def __enter__(self) -> CountingEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, chunks):
        for result in self.engine.run(chunks):
            self.answered += 1
            yield result


def run(ctx, engine: CountingEngine, key, job: str, lines: list[dict]) -> dict:
    """Admit with ``ctx``'s settings, run to completion, check the outputs; the figures."""
    from runner.service import Runner
    from watcher.service import Watcher

    ref = submit(ctx, key, job, lines)
    answered = engine.answered
    began = time.perf_counter()
    Watcher(ctx).run_once()
    admitted = time.perf_counter()
    runner = Runner(ctx, engine)
    record = ctx.batches.for_job(ref)
    while not record.status.is_terminal:
        runner.run_once()
        record = ctx.batches.for_job(ref)
    seconds = time.perf_counter() - began
    data, _ = ctx.store.get(ctx.outbox, record.result.output_key)
    answers = {line["custom_id"]: line for line in map(json.loads, data.splitlines())}
    if sorted(answers) != sorted(line["custom_id"] for line in lines):
        raise SystemExit(f"{job}: custom_ids missing or repeated in the output")
    first: dict[str, str] = {}
    for line in lines:  # a copy has its original's answer, under its own ids
        original_id = first.setdefault(line["body"]["messages"][0]["content"], line["custom_id"])
        if original_id == line["custom_id"]:
            continue
        original, answer = answers[original_id]["response"]["body"], answers[line["custom_id"]]["response"]["body"]
        if answer["choices"] != original["choices"] or answer["id"] == original["id"]:
            raise SystemExit(f"{job}: {line['custom_id']} does not carry {original_id}'s answer under its own id")
    generated = record.usage.output_tokens if record.usage else 0
    return {
        "lines": len(lines),
        "engine_lines": engine.answered - answered,
        "duplicate_lines": record.duplicate_lines,
        "admission_s": admitted - began,
        "seconds": seconds,
        "lines_per_s": len(lines) / seconds,
        "completed": record.request_counts.completed,
        "generated_tokens_reported": generated,
    }


def report(results: dict, out: Path) -> None:
    off, on = results["off"], results["on"]
    print(f"\n{off['lines']} chat lines, {on['duplicate_lines']} of them ({results['share']:.0%}) repeating an "
          f"earlier line, temperature 0, max_tokens {results['max_tokens']}, warm engine\n")
    print("| dedup | engine lines | admission → completed | lines/s |\n|---|---|---|---|")
    for name, r in (("off", off), ("on", on)):
        print(f"| {name} | {r['engine_lines']} | {r['seconds']:.1f} s | {r['lines_per_s']:.1f} |")
    saving = 1 - on["seconds"] / off["seconds"]
    results["time_saved"] = saving
    print(f"\ndedup on: {saving:.0%} less time, {off['engine_lines'] - on['engine_lines']} engine requests saved")
    out.mkdir(parents=True, exist_ok=True)
    (out / "dedup.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"plot: {plot(results, out)}")


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.4))
    names = ["dedup off", "dedup on"]
    axes[0].bar(names, [results["off"]["seconds"], results["on"]["seconds"]], color=["#888", "#2a7"])
    axes[0].set_title("admission → completed, s")
    axes[1].bar(names, [results["off"]["engine_lines"], results["on"]["engine_lines"]], color=["#888", "#2a7"])
    axes[1].set_title("requests the engine ran")
    fig.suptitle(f"{results['off']['lines']} lines, {results['share']:.0%} duplicates")
    fig.tight_layout()
    path = out / "dedup.png"
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--duplicates", type=float, default=0.3, help="share of lines repeating an earlier one")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()

    from dropbatch.bootstrap import bootstrap
    from dropbatch.context import Context
    from dropbatch.emulator import moto_server
    from dropbatch.engine.tinymodel import build_tiny_model
    from dropbatch.settings import Settings
    from runner.engine import build_engine

    build_tiny_model(MODEL_DIR)
    with moto_server() as endpoint:
        env = {"DROPBATCH_S3_ENDPOINT": endpoint, "DROPBATCH_MODEL": str(MODEL_DIR),
               "DROPBATCH_TIER_QUOTAS": "enterprise=10000000", "DROPBATCH_CHUNK_LINES": "100"}
        settings = Settings.from_env(env)
        bootstrap(settings.storage)
        on = Context.from_settings(settings)
        off = Context.from_settings(Settings.from_env({**env, "DROPBATCH_DEDUP": "0"}))
        on.tenants.create(TENANT, "enterprise")
        key = on.tenants.create_signing_key(TENANT)
        results: dict = {"share": args.duplicates, "max_tokens": args.max_tokens}
        with build_engine(settings) as warm:
            engine = CountingEngine(warm)
            run(on, engine, key, "warm-up", batch_lines(8, 0.0, "warm", args.max_tokens))  # engine start, not timed
            results["off"] = run(off, engine, key, "dedup-off", batch_lines(args.lines, args.duplicates, "off",
                                                                            args.max_tokens))
            results["on"] = run(on, engine, key, "dedup-on", batch_lines(args.lines, args.duplicates, "on",
                                                                         args.max_tokens))
    report(results, args.out)


if __name__ == "__main__":
    main()
