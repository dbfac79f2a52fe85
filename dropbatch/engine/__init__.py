"""Inference engines behind one ``Engine`` protocol.

``build_engine(settings)`` gives the real one (vLLM through ray.data.llm); it is
imported lazily so the gateway and watcher never load ray, vllm or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dropbatch.engine.base import Engine, LineResult, WorkChunk

if TYPE_CHECKING:
    from dropbatch.settings import Settings

__all__ = ["Engine", "LineResult", "WorkChunk", "build_engine"]


def build_engine(settings: Settings) -> Engine:
    """The production engine for ``settings``: vLLM through ray.data.llm (CPU or GPU)."""
    from dropbatch.engine.vllm import RayVLLMEngine

    return RayVLLMEngine(settings)
