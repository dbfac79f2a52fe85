"""Benchmark: a small job from tenant B behind a big job from tenant A, fair share against first come first served.

    python bench/fairness.py [--a-lines 20000] [--b-lines 50] [--weight-lines 5000] [--policies priority,fcfs]
                             [--pairs 1] [--b-delay 1] [--out bench/out]

For each scheduling policy (``DROPBATCH_SCHEDULING_POLICY``; ``priority`` is dropbatch's
default, ``fcfs`` is vLLM's first come first served, the behaviour before issue 12) one
`dropbatch up` stack (bench/vs_run_batch.py's ``Stack``: embedded moto S3, watcher, runner,
gateway, the tiny model on the warm engine) runs, in this order:

1. B's job alone on the idle system, three times: upload → every result in the outbox (the median);
2. A's job alone: its lines per second (upload → done);
3. A's job, and B's job uploaded right after it: B's latency, and A's lines per second
   with B beside it (2 and 3 in turn ``--pairs`` times; the medians compare);
4. tier weights (``--weight-lines``, 0 skips it): a ``basic`` tenant (weight 2) and a
   ``premium`` one (weight 4) upload a job of the same size at once; while both run, the
   engine should serve premium about twice the lines of basic. Measured as each job's
   lines done when the first of them finishes.

Both tenants are ``enterprise`` (equal weights: the least B can get); quotas are raised by
setting. Every job's prompts carry a run tag, so no job is answered from the outbox.
The issue's goal: B within 2× its idle latency, A's throughput down by no more than B's
share of the lines. Prints a table, writes ``fairness.json`` and ``fairness.png`` to
``--out`` (and the plot to ``docs/`` with ``--docs``). Not a test: figures vary by machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_run_batch import MODEL_DIR, REPO, CpuShare, Stack, requests, save_report  # noqa: E402

QUOTAS = "free=10000000,basic=10000000,premium=10000000,enterprise=10000000"


def timed(stack: Stack, tenant: str, job: str, lines: list[dict]) -> float:
    """Upload → done seconds."""
    began = time.perf_counter()
    record = stack.wait(stack.submit(tenant, job, lines))
    if record.request_counts.completed != len(lines):
        raise SystemExit(f"{job}: {record.status.value}, {record.request_counts}")
    return time.perf_counter() - began


def followed(stack: Stack, tenant: str, job: str, lines: list[dict]) -> tuple[float, dict[str, float], dict]:
    """Upload → every result in the outbox, each step's seconds (bench/timeline.py, 0.1 s looks), and
    what the machine did meanwhile: the S3 server's record-GET latency, each kind of process's CPU, and
    how late the kernel woke a nice-0 and a real-time process (``Starved``)."""
    from timeline import Timeline, s3_latency

    faults = major_faults()
    with CpuShare(interval=0.2) as cpu, Starved() as starved, Timeline(stack.ctx) as timeline:
        began = time.perf_counter()
        timeline.add(stack.submit(tenant, job, lines), began)
        [seen] = timeline.wait(1)
    faults = major_faults() - faults
    if seen.record.request_counts.completed != len(lines):
        raise SystemExit(f"{job}: {seen.record.status.value}, {seen.record.request_counts}")
    machine = {"s3": s3_latency(timeline.s3_gets, began, began + seen.latency), "major_faults": faults,
               "starved": starved.late,
               "cores": {kind: seconds / cpu.wall for kind, seconds in cpu.seconds.items() if seconds / cpu.wall >= 0.05}}
    return seen.latency, seen.step_seconds(), machine


def major_faults() -> int:
    """The machine's major page faults so far: pages a process had to wait for from disk.

    Printed beside each B job, so a stalled step can be told apart from paging: this VM's
    kernel pages out memory left untouched for a while (DAMON, a ``pageout`` scheme; no
    swap, so file-backed pages such as code go). The B windows measured so far had 0 to 3.
    """
    with open("/proc/vmstat") as vmstat:
        return next((int(line.split()[1]) for line in vmstat if line.startswith("pgmajfault ")), 0)


NAPPER = """
import json, os, select, sys, time
if sys.argv[1] == "fifo":
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:
        print("null")
        sys.exit()
else:  # the fair class even when the benchmark itself runs under `chrt`
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
late = []
while True:
    began = time.monotonic()
    if select.select([sys.stdin], [], [], 0.01)[0]:
        break  # stdin closed: the window is over
    if (over := time.monotonic() - began - 0.01) > 0.05:
        late.append(over)
print(json.dumps({"total_s": sum(late), "max_s": max(late, default=0.0), "late_naps": len(late)}))
"""


class Starved:
    """How late the kernel woke a waiting process during a window.

    Two processes nap 10 ms at a time and add up how late their wake-ups came (those more
    than 50 ms late): one in the default (fair) scheduling class at nice 0, as the watcher,
    the runner's driver and the S3 server run; one ``SCHED_FIFO``, which only interrupts or a
    paused VM can hold up (it needs root; ``None`` without). The first late by seconds while
    the second is on time means the CPUs were running, but not the fair class's waiting
    tasks: what this machine's kernel does during a big job (README, "The outliers").
    """

    def __enter__(self) -> Starved:
        self._nappers = {policy: subprocess.Popen([sys.executable, "-c", NAPPER, policy], stdin=subprocess.PIPE,
                                                  stdout=subprocess.PIPE, text=True) for policy in ("fair", "fifo")}
        return self

    def __exit__(self, *exc: object) -> None:
        self.late = {policy: json.loads(napper.communicate("", timeout=30)[0])
                     for policy, napper in self._nappers.items()}


def contended(stack: Stack, run: str, a_lines: int, b_lines: int, b_delay: float = 1.0) -> dict:
    """A's big job, then B's small one right after: B's latency and steps, A's seconds."""
    stack.tenant(f"{run}-b")  # as for B alone: creating a tenant is not part of its job's latency
    began = time.perf_counter()
    a_ref = stack.submit(f"{run}-a", f"{run}-a-both", requests(a_lines, f"{run}-a-both"))
    time.sleep(b_delay)  # "right after" (1 s): A is admitted and starting when B arrives; later: A in full flow
    b_seconds, b_steps, b_machine = followed(stack, f"{run}-b", f"{run}-b-both", requests(b_lines, f"{run}-b-both"))
    a_record = stack.wait(a_ref)
    a_seconds = time.perf_counter() - began
    if a_record.request_counts.completed != a_lines:
        raise SystemExit(f"{a_record.id}: {a_record.status.value}, {a_record.request_counts}")
    return {"b_latency_s": b_seconds, "a_seconds": a_seconds, "b_steps": b_steps, "b_machine": b_machine}


def weighted(stack: Stack, run: str, lines: int) -> dict:
    """A basic and a premium tenant's equal jobs at once: how the engine split its lines between them.

    Two readings: the lines each job had done when the first finished (record counts,
    which lag by what is in flight), and the split implied by when each finished: the
    engine's rate is constant, so with both ``N`` lines the first job's rival had done
    ``N * (2 * t_first / t_last - 1)`` when the first finished.
    """
    from dropbatch.errors import NotFound

    began = time.perf_counter()
    refs = {tier: stack.submit(f"{run}-{tier}", f"{run}-{tier}-w", requests(lines, f"{run}-{tier}-w"), tier=tier)
            for tier in ("basic", "premium")}
    first: dict[str, int] = {}
    done_at: dict[str, float] = {}
    records: dict = {}
    while len(done_at) < 2:
        time.sleep(0.1)
        try:
            records = {tier: stack.ctx.batches.for_job(ref) for tier, ref in refs.items()}
        except NotFound:
            continue  # not admitted yet
        for tier, record in records.items():
            if record.status.is_terminal and tier not in done_at:
                done_at[tier] = time.perf_counter() - began
                first = first or {t: r.request_counts.completed for t, r in records.items()}
    for record in records.values():
        if record.request_counts.completed != lines:
            raise SystemExit(f"{record.id}: {record.status.value}, {record.request_counts}")
    weights = stack.ctx.settings.limits.tier_weights
    leader = min(done_at, key=done_at.get)
    rival = lines * max(2 * done_at[leader] / max(done_at.values()) - 1, 1e-9)
    by_time = lines / rival if leader == "premium" else rival / lines
    return {"weight_lines": lines, "basic_done": first["basic"], "premium_done": first["premium"],
            "served_ratio": first["premium"] / max(first["basic"], 1), "served_ratio_by_time": by_time,
            "basic_s": done_at["basic"], "premium_s": done_at["premium"],
            "weight_ratio": weights["premium"] / weights["basic"]}


def measure(policy: str, work: Path, endpoint: str, a_lines: int, b_lines: int, weight_lines: int = 0,
            env: dict[str, str] | None = None, pairs: int = 1, b_delay: float = 1.0) -> dict:
    run = f"fair-{policy}-{int(time.time())}"
    stack = Stack(work / f"home-{policy}", endpoint,
                  {"DROPBATCH_SCHEDULING_POLICY": policy, "DROPBATCH_TIER_QUOTAS": QUOTAS,
                   "DROPBATCH_MAX_FILE_LINES": str(max(a_lines, 50_000)), **(env or {})})
    try:
        timed(stack, f"{run}-w", f"{run}-warm", requests(8, f"{run}-warm"))  # the first job pays Ray Data's warm-up
        # B alone, three times (a single 1-s job varies by a few tenths): the median run.
        idle_runs = sorted((followed(stack, f"{run}-b", f"{run}-b-idle{i}", requests(b_lines, f"{run}-b-idle{i}"))
                            for i in range(3)), key=lambda seen: seen[0])
        idle, idle_steps, idle_machine = idle_runs[1]
        # A alone and A with B, in turn, ``pairs`` times: A's drop is a few percent at most, below one
        # run's noise, so it is the medians that compare (and every run is kept in the JSON).
        alone, pairs_run = [], []
        for i in range(pairs):
            alone.append(timed(stack, f"{run}-a", f"{run}-a-alone{i}", requests(a_lines, f"{run}-a-alone{i}")))
            pairs_run.append(contended(stack, f"{run}-{i}", a_lines, b_lines, b_delay))
        tiers = weighted(stack, run, weight_lines) if weight_lines else {}
    finally:
        stack.close()
    both = sorted(pairs_run, key=lambda r: r["b_latency_s"])[(len(pairs_run) - 1) // 2]  # B's median (lower middle) run
    alone_s, with_b_s = statistics.median(alone), statistics.median(r["a_seconds"] for r in pairs_run)
    return {
        "policy": policy, "a_lines": a_lines, "b_lines": b_lines, "pairs": pairs, "b_delay_s": b_delay,
        "b_idle_s": idle, "b_behind_a_s": both["b_latency_s"], "b_slowdown": both["b_latency_s"] / idle,
        "b_behind_a_runs_s": [r["b_latency_s"] for r in pairs_run],
        "b_behind_a_runs_steps": [r["b_steps"] for r in pairs_run],
        "b_behind_a_runs_machine": [r["b_machine"] for r in pairs_run], "b_idle_machine": idle_machine,
        "a_alone_lines_per_s": a_lines / alone_s, "a_with_b_lines_per_s": a_lines / with_b_s,
        "a_alone_runs_s": alone, "a_with_b_runs_s": [r["a_seconds"] for r in pairs_run],
        "a_drop": 1 - alone_s / with_b_s, "b_share": b_lines / (a_lines + b_lines),
        "b_idle_steps": idle_steps, "b_behind_a_steps": both["b_steps"], **tiers,
    }


def report(results: list[dict], out: Path, docs: bool) -> None:
    from timeline import STEP_NAMES

    print("\n| policy | B alone (idle) | B right after A | B slowdown (goal ≤ 2×) | A alone | A with B | "
          "A's drop (goal ≤ B's share) |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['policy']} | {r['b_idle_s']:.1f} s | {r['b_behind_a_s']:.1f} s | {r['b_slowdown']:.2f}× | "
              f"{r['a_alone_lines_per_s']:.0f} lines/s | {r['a_with_b_lines_per_s']:.0f} lines/s | "
              f"{r['a_drop'] * 100:+.1f}% (B's share {r['b_share'] * 100:.2f}%) |")
    for r in results:
        if r["pairs"] > 1:
            print(f"  {r['policy']}: {r['pairs']} pairs (medians above); B right after A "
                  f"{', '.join(f'{s:.1f}' for s in r['b_behind_a_runs_s'])} s; A alone "
                  f"{', '.join(f'{s:.1f}' for s in r['a_alone_runs_s'])} s; A with B "
                  f"{', '.join(f'{s:.1f}' for s in r['a_with_b_runs_s'])} s")
    print(f"\n{results[0]['a_lines']} lines from A, {results[0]['b_lines']} from B "
          f"(uploaded {results[0]['b_delay_s']:.0f} s after A), both enterprise. "
          "Where B's time went (bench/timeline.py, 0.1 s looks):")
    for r in results:
        runs = [("idle", r["b_idle_steps"], r["b_idle_machine"])] + [
            (f"behind A #{i + 1}", steps, machine)
            for i, (steps, machine) in enumerate(zip(r["b_behind_a_runs_steps"], r["b_behind_a_runs_machine"],
                                                     strict=True))]
        for when, b_steps, machine in runs:
            steps = ", ".join(f"{STEP_NAMES[step]} {seconds:.1f} s" for step, seconds in b_steps.items())
            print(f"  {r['policy']:>8} B {when:>11}: {steps}")
            s3 = machine["s3"]
            cores = ", ".join(f"{kind} {used:.2f}" for kind, used in sorted(machine["cores"].items(),
                                                                           key=lambda item: -item[1]))
            print(f"  {'':>8}   {'meanwhile':>11}: S3 record GET p50 {s3['p50_ms']:.0f} ms, slowest "
                  f"{s3['max_ms']:.0f} ms ({s3['gets']} GETs); {machine['major_faults']} major page faults; "
                  f"cores busy: {cores}")
            fair, fifo = machine["starved"]["fair"], machine["starved"]["fifo"]
            print(f"  {'':>8}   {'':>11}  a nice-0 napper woke {fair['total_s']:.1f} s late in all "
                  f"(worst {fair['max_s']:.2f} s), a SCHED_FIFO one "
                  + (f"{fifo['total_s']:.1f} s (worst {fifo['max_s']:.2f} s)" if fifo else "not run (not root)"))
    weighted_runs = [r for r in results if "served_ratio" in r]
    if weighted_runs:
        print("\n| policy | basic + premium, lines each | finished (premium, basic) | premium : basic served, "
              "by counts at the first finish | by finish times | weights |\n|---|---|---|---|---|---|")
    for r in weighted_runs:
        print(f"| {r['policy']} | {r['weight_lines']} | {r['premium_s']:.1f} s, {r['basic_s']:.1f} s | "
              f"{r['served_ratio']:.2f}× ({r['premium_done']} : {r['basic_done']}) | {r['served_ratio_by_time']:.2f}× | "
              f"{r['weight_ratio']:.0f}× |")
    save_report("fairness", results, figure(results), out, docs)


def figure(results: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4))
    names = [r["policy"] for r in results]
    x = range(len(results))
    left.bar([i - 0.2 for i in x], [r["b_idle_s"] for r in results], 0.4, label="B alone", color="#888")
    left.bar([i + 0.2 for i in x], [r["b_behind_a_s"] for r in results], 0.4, label="B right after A", color="#2a7")
    left.set_xticks(list(x), names)
    left.set_title(f"B's {results[0]['b_lines']}-line job: s")
    left.legend(fontsize=8)
    right.bar([i - 0.2 for i in x], [r["a_alone_lines_per_s"] for r in results], 0.4, label="A alone", color="#888")
    right.bar([i + 0.2 for i in x], [r["a_with_b_lines_per_s"] for r in results], 0.4, label="A with B",
              color="#2a7")
    right.set_xticks(list(x), names)
    right.set_title(f"A's {results[0]['a_lines']}-line job: lines/s")
    right.legend(fontsize=8)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a-lines", type=int, default=20_000)
    parser.add_argument("--b-lines", type=int, default=50)
    parser.add_argument("--weight-lines", type=int, default=5_000,
                        help="lines of each tier's job in the tier-weight scenario (0 skips it)")
    parser.add_argument("--policies", default="priority,fcfs")
    parser.add_argument("--b-delay", type=float, default=1.0,
                        help="seconds from A's upload to B's (1: right after, while A starts; 15: A in full flow)")
    parser.add_argument("--pairs", type=int, default=1,
                        help="runs of A alone and of A with B, in turn (the medians compare)")
    parser.add_argument("--env", action="append", default=[], metavar="DROPBATCH_X=VALUE",
                        help="a setting for the stack (repeatable), e.g. DROPBATCH_ENGINE_BATCH_SIZE=128")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--docs", action="store_true", help="also write the plot to docs/fairness.png")
    args = parser.parse_args()
    from dropbatch.emulator import moto_server
    from dropbatch.engine.tinymodel import build_tiny_model

    build_tiny_model(MODEL_DIR)
    with tempfile.TemporaryDirectory() as tmp, moto_server() as endpoint:
        env = dict(item.split("=", 1) for item in args.env)
        results = [measure(policy, Path(tmp), endpoint, args.a_lines, args.b_lines, args.weight_lines, env,
                           args.pairs, args.b_delay) for policy in args.policies.split(",")]
    report(results, args.out, args.docs)


if __name__ == "__main__":
    main()
