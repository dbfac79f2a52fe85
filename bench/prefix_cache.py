"""Benchmark: a batch where 90% of the lines share a ~300-token system prompt, with and without prefix reuse.

    python bench/prefix_cache.py [--lines 5000] [--variants ordered+cache,unordered-nocache,...] [--out bench/out]

Variants (each its own `dropbatch up` stack, bench/vs_run_batch.py's ``Stack``):
``ordered+cache`` is dropbatch's default (vLLM prefix caching on, each chunk's lines sent
sorted by prompt); ``unordered-nocache`` is the batch as filed without the cache
(``DROPBATCH_ENABLE_PREFIX_CACHING=0``, ``DROPBATCH_ORDER_BY_PREFIX=0``); ``ordered-nocache``
and ``unordered+cache`` separate the two effects. The file interleaves the shared-prompt
lines with the others (seeded shuffle); the other 10% carry their own system prompts of the
same length. Each variant measures upload → every result in the outbox, as prompt + generated
tokens per second. Prints a table, writes ``prefix_cache.json`` and ``prefix_cache.png``
(and ``docs/prefix_cache.png`` with ``--docs``). Not a test: figures vary by machine.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_run_batch import MODEL, MODEL_DIR, REPO, Stack, requests, save_report  # noqa: E402

VARIANTS = {  # name: (prefix caching, ordered by prefix)
    "ordered+cache": (True, True),
    "unordered-nocache": (False, False),
    "ordered-nocache": (False, True),
    "unordered+cache": (True, False),
}
SHARED_FRACTION = 0.9
MAX_TOKENS = 8  # short answers: the prompt is what a shared prefix saves


def system_prompt(tokens: int, seed: int) -> str:
    """A system prompt of about ``tokens`` tokens of the tiny model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    rng = random.Random(seed)
    words = ["policy", "answer", "briefly", "customer", "order", "refund", "shipping", "account", "support",
             "politely", "never", "always", "check", "invoice", "delivery", "product", "return", "warranty"]
    text = f"You are assistant {seed}. Rules:"
    while len(tokenizer(text)["input_ids"]) < tokens:
        text += " " + " ".join(rng.choice(words) for _ in range(12)) + "."
    return text


def batch(n: int, tag: str, shared: str, others: list[str]) -> list[dict]:
    rng = random.Random(7)
    lines = []
    for i in range(n):
        system = shared if i < int(n * SHARED_FRACTION) else others[i % len(others)]
        lines.append({
            "custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
                     "messages": [{"role": "system", "content": system},
                                  {"role": "user", "content": f"Question {i} of {tag}: where is my order?"}]},
        })
    rng.shuffle(lines)  # as filed: shared-prompt lines interleaved with the others
    return lines


def measure(variant: str, work: Path, endpoint: str, n: int, shared: str, others: list[str]) -> dict:
    cache, ordered = VARIANTS[variant]
    run = f"prefix-{variant.replace('+', '-')}-{int(time.time())}"
    stack = Stack(work / f"home-{run}", endpoint,
                  {"DROPBATCH_ENABLE_PREFIX_CACHING": "1" if cache else "0",
                   "DROPBATCH_ORDER_BY_PREFIX": "1" if ordered else "0"})
    try:
        stack.wait(stack.submit(run, f"{run}-warm", requests(8, f"{run}-warm")))  # Ray Data's first-job warm-up
        began = time.perf_counter()
        record = stack.wait(stack.submit(run, f"{run}-batch", batch(n, run, shared, others)))
        seconds = time.perf_counter() - began
    finally:
        stack.close()
    if record.request_counts.completed != n or record.usage is None:
        raise SystemExit(f"{variant}: {record.status.value}, {record.request_counts}")
    tokens = record.usage.input_tokens + record.usage.output_tokens
    return {"variant": variant, "lines": n, "seconds": seconds, "prompt_tokens": record.usage.input_tokens,
            "tokens_per_s": tokens / seconds, "lines_per_s": n / seconds}


def report(results: list[dict], out: Path, docs: bool) -> None:
    base = next((r for r in results if r["variant"] == "unordered-nocache"), results[-1])
    print("\n| variant | seconds | tokens/s (prompt + generated) | lines/s | vs unordered, no cache |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} | {r['lines_per_s']:.1f} | "
              f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}× |")
    per_line = results[0]["prompt_tokens"] / results[0]["lines"]
    print(f"\n{results[0]['lines']} lines, {SHARED_FRACTION:.0%} sharing one system prompt, "
          f"{per_line:.0f} prompt tokens per line, max_tokens {MAX_TOKENS}.")
    save_report("prefix_cache", results, figure(results), out, docs)


def figure(results: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(results), 3.4))
    colors = ["#2a7" if r["variant"] == "ordered+cache" else "#888" for r in results]
    ax.bar([r["variant"] for r in results], [r["tokens_per_s"] for r in results], color=colors)
    ax.set_title(f"{results[0]['lines']} lines, 90% shared system prompt: tokens/s")
    ax.tick_params(axis="x", labelsize=8)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--docs", action="store_true", help="also write the plot to docs/prefix_cache.png")
    args = parser.parse_args()
    from dropbatch.emulator import moto_server
    from dropbatch.engine.tinymodel import build_tiny_model

    build_tiny_model(MODEL_DIR)
    shared = system_prompt(args.prompt_tokens, 0)
    others = [system_prompt(args.prompt_tokens, seed) for seed in range(1, 21)]
    results = []
    with tempfile.TemporaryDirectory() as tmp, moto_server() as endpoint:
        for variant in args.variants.split(","):
            if variant not in VARIANTS:
                raise SystemExit(f"unknown variant {variant!r}; variants are {', '.join(VARIANTS)}")
            results.append(measure(variant, Path(tmp), endpoint, args.lines, shared, others))
    report(results, args.out, args.docs)


if __name__ == "__main__":
    main()
