"""Benchmark: admitting a large chat file, today's code against commit 7722585 (before the field tables).

    python bench/admission.py [--lines 50000] [--base 7722585] [--out bench/out] [--profile]

What is timed is the watcher's validation path, ``watcher.scan.scan_inputs``: stream
the input, hash it, parse every line, check every body against the field rules,
estimate its size for the planner, cut chunks. The file sits in an in-memory object
store so S3 latency does not hide the CPU cost. Each version runs in its own
subprocess (``git archive`` of the base commit into a temporary directory, this
worktree for today), one run each, on the same bytes: chat lines of several shapes
both versions accept (system prompts, several turns, stop, seed, top_p, unicode).

Goal (issue 11): today at most 1.5x the base time. The ratio is taken on CPU seconds
(the process's own time), so other work on a shared machine does not skew it; wall
seconds are shown beside. Prints a table, writes
``admission.json`` and ``admission.png`` to ``--out``; ``--profile`` also prints the
top of a cProfile of today's run. Not a test: figures vary by machine.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL = 1.5

WORKER = r"""
import cProfile, hashlib, inspect, json, pstats, sys, time

from dropbatch.models import InputObject
from dropbatch.settings import Settings
from dropbatch.storage.memory import MemoryObjectStore
from watcher.scan import scan_inputs

path, profile = sys.argv[1], sys.argv[2] == "1"
data = open(path, "rb").read()
settings = Settings.from_env({})
store = MemoryObjectStore(["inbox"])
store.put("inbox", "t/job/in.jsonl", data)
item = InputObject(key="t/job/in.jsonl", size=len(data), sha256=hashlib.sha256(data).hexdigest())
kwargs = dict(endpoint="/v1/chat/completions", model="dropbatch-tiny", limits=settings.limits,
              default_max_tokens=settings.engine.default_max_tokens)
if "body_limits" in inspect.signature(scan_inputs).parameters:
    from dropbatch.bodies import body_limits
    kwargs["body_limits"] = body_limits(settings)
profiler = cProfile.Profile() if profile else None
began, cpu = time.perf_counter(), time.process_time()
if profiler:
    profiler.enable()
result = scan_inputs(store, "inbox", [item], **kwargs)
if profiler:
    profiler.disable()
seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
if profiler:
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "lines": result.lines, "errors": result.error_count,
                  "chunks": len(result.chunks)}))
"""

SYSTEMS = ["You are a careful assistant.", "Réponds en français, brièvement.", "Extract the entities as JSON."]
WORDS = "the batch model returns one answer for each line of the input file quickly and safely".split()


def make_line(i: int, rng: random.Random) -> dict:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60)))
    messages = [{"role": "user", "content": f"{text} #{i} — ünïcødé ✓"}]
    shape = i % 4
    if shape >= 1:
        messages.insert(0, {"role": "system", "content": SYSTEMS[i % len(SYSTEMS)]})
    if shape == 3:
        messages[1:1] = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi, how can I help?"}]
    body: dict = {"model": "dropbatch-tiny", "messages": messages, "max_tokens": 16 + i % 48}
    if shape == 2:
        body |= {"temperature": 0.7, "top_p": 0.9, "seed": i, "stop": ["\n\n", "END"]}
    return {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_input(path: Path, lines: int) -> None:
    rng = random.Random(11)
    with path.open("w", encoding="utf-8") as out:
        for i in range(lines):
            out.write(json.dumps(make_line(i, rng), ensure_ascii=False) + "\n")


def extract(commit: str, dest: Path) -> None:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")


def run(tree: Path, path: Path, *, profile: bool) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(path), "1" if profile else "0"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker in {tree} failed:\n{proc.stderr}")
    if profile:
        print(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(rows: list[tuple[str, dict]], lines: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [name for name, _ in rows]
    seconds = [r["cpu_seconds"] for _, r in rows]
    ax.barh(names, seconds, color=["#999999", "#1f77b4"])
    ax.axvline(rows[0][1]["cpu_seconds"] * GOAL, color="#d62728", linestyle="--", label=f"goal: {GOAL}x base")
    for y, s in enumerate(seconds):
        ax.text(s, y, f" {s:.2f} s", va="center")
    ax.set_xlabel(f"CPU seconds to admit {lines:,} chat lines (scan_inputs, one run)")
    ax.set_xlim(0, max(seconds + [rows[0][1]["cpu_seconds"] * GOAL]) * 1.25)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--base", default="7722585")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of today's run (slower)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dropbatch-admission-") as tmp:
        path = Path(tmp) / "input.jsonl"
        write_input(path, args.lines)
        base_tree = Path(tmp) / "base"
        extract(args.base, base_tree)
        rows = [(f"base {args.base}", run(base_tree, path, profile=False)), ("today", run(REPO, path, profile=False))]
        if args.profile:
            run(REPO, path, profile=True)
        size = path.stat().st_size
    base = rows[0][1]["cpu_seconds"]
    print(f"admission of {args.lines:,} chat lines ({size / 1e6:.1f} MB), one run each")
    print(f"{'code':<16} {'cpu s':>7} {'wall s':>7} {'lines/s':>9} {'x base':>7} {'errors':>7}")
    for name, r in rows:
        print(f"{name:<16} {r['cpu_seconds']:>7.2f} {r['seconds']:>7.2f} {r['lines'] / r['cpu_seconds']:>9,.0f} "
              f"{r['cpu_seconds'] / base:>7.2f} {r['errors']:>7}")
    ratio = rows[1][1]["cpu_seconds"] / base
    print(f"goal: today <= {GOAL}x base -> {'met' if ratio <= GOAL else 'NOT met'} ({ratio:.2f}x)")
    report = {"lines": args.lines, "bytes": size, "goal": GOAL, "ratio": ratio, "measured_at": time.time(),
              "runs": {name: r for name, r in rows}}
    (args.out / "admission.json").write_text(json.dumps(report, indent=2))
    plot(rows, args.lines, args.out / "admission.png")


if __name__ == "__main__":
    main()
