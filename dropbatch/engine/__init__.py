"""The engine seam: the ``Engine`` protocol and the row contract.

The real engine (warm vLLM actors fed by Ray Data) lives with its only user, the
runner: ``runner.engine.build_engine``. The kernel never imports ray, vllm or torch.
"""

from __future__ import annotations

from dropbatch.engine.base import Engine, LineResult, WorkChunk

__all__ = ["Engine", "LineResult", "WorkChunk"]
