"""Which engine kinds a model serves, read from its weights as vLLM's ``--runner auto`` reads them.

A generative model serves generate (chat, completions, responses) and, on first use,
embeddings; an embedding model serves embeddings only, so the runner never loads a
generate engine for it. The signs are vLLM 0.32's (``ModelConfig._get_default_runner_type``),
read without importing vLLM into the runner's driver: a sentence-transformers
``modules.json`` with a Pooling module (how most embedding models on the hub say so, even
on a ``*ForCausalLM`` architecture), or an architecture vLLM names an embedding one by its
suffix. A bare ``*Model`` architecture is left generative: vLLM's registry, not its
suffix, decides those (``ChatGLMModel`` generates).
"""

from __future__ import annotations

import json
from pathlib import Path

from dropbatch.settings import EngineSettings
from runner.engine.server import EMBED, GENERATE

EMBEDDING_SUFFIXES = ("EmbeddingModel", "ForTextEncoding")


def served_tasks(weights: str) -> tuple[str, ...]:
    """Engine kinds the model at ``weights`` serves, the one started with the runner first.

    A hub id not downloaded yet cannot be read here: it is taken as generative (vLLM's default).
    """
    path = Path(weights)
    if _has_pooling_module(path / "modules.json"):
        return (EMBED,)
    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return (GENERATE, EMBED)
    if architectures and all(str(arch).endswith(EMBEDDING_SUFFIXES) for arch in architectures):
        return (EMBED,)
    return (GENERATE, EMBED)


def _has_pooling_module(modules: Path) -> bool:
    try:
        entries = json.loads(modules.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(entries, list) and any(
        isinstance(entry, dict) and str(entry.get("type", "")).endswith(".Pooling") for entry in entries
    )


def served_by_model(engine: EngineSettings) -> dict[str, tuple[str, ...]]:
    """``served_tasks`` of every served model (``DROPBATCH_MODELS``), by model name."""
    return {model: served_tasks(weights) for model, weights in engine.served.items()}
