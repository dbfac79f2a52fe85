"""The models this deployment serves (``DROPBATCH_MODELS``): what ``body.model`` may name.

Read from the settings only, so the gateway and the watcher answer without vLLM:
``check_model`` at admission, ``model_object`` for ``GET /v1/models``, and
``model_of_file`` (awaited, by the gateway) to find the model an uploaded batch file's lines name.
"""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path
from typing import Any

from dropbatch.errors import NotFound
from dropbatch.jsonl import aiter_lines, first_model
from dropbatch.settings import EngineSettings
from dropbatch.storage.base import AsyncObjectStore

OWNER = "dropbatch"


def check_model(engine: EngineSettings, model: str | None, *, param: str = "model") -> str:
    """``model`` if it is served (None: the default model); else ``model_not_found`` naming the served ones."""
    if model is None:
        return engine.model_name
    if model not in engine.served:
        names = ", ".join(repr(name) for name in engine.served)
        raise NotFound(
            f"The model {model!r} does not exist; this deployment serves {names}.", code="model_not_found", param=param
        )
    return model


def model_object(engine: EngineSettings, name: str) -> dict[str, Any]:
    """OpenAI's Model object; ``created`` is when local weights were built (0 for a hub id)."""
    config = Path(engine.served[name]) / "config.json"
    created = int(config.stat().st_mtime) if config.is_file() else 0
    return {"id": name, "object": "model", "created": created, "owned_by": OWNER}


async def model_of_file(store: AsyncObjectStore, bucket: str, key: str, *, max_line_bytes: int) -> str | None:
    """``body.model`` of the first line of a JSONL object (read: one line's worth of bytes) that names one."""
    async with aclosing(store.iter_bytes(bucket, key, end=max_line_bytes + 1)) as head:
        async with aclosing(aiter_lines(head, max_line_bytes=max_line_bytes)) as lines:
            async for line in lines:
                if (model := first_model([line])) is not None:
                    return model
    return None
