"""Counting prompt tokens for cost estimates, without torch.

With ``<DROPBATCH_MODEL>/tokenizer.json`` on local disk, the ``tokenizers``
library (Rust) counts exactly what the model's tokenizer produces for the text
(without the chat template's few tokens per message). When the model is a hub
id or the file is missing, nothing is downloaded: the count is an estimate of
one token per 4 bytes of UTF-8, and responses say ``"tokenizer": "estimate"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dropbatch.settings import EngineSettings

log = logging.getLogger("dropbatch.gateway")

BYTES_PER_TOKEN = 4
ENCODE_BATCH = 256


class TokenCounter:
    """Counts tokens with a real tokenizer when one is given, else by ``BYTES_PER_TOKEN``."""

    def __init__(self, tokenizer: Any | None = None) -> None:
        self.tokenizer = tokenizer

    @property
    def source(self) -> str:
        return "tokenizer.json" if self.tokenizer is not None else "estimate"

    def count(self, texts: Sequence[str]) -> list[int]:
        if self.tokenizer is None:
            return [math.ceil(len(t.encode("utf-8")) / BYTES_PER_TOKEN) for t in texts]
        counts: list[int] = []
        for start in range(0, len(texts), ENCODE_BATCH):
            encodings = self.tokenizer.encode_batch(list(texts[start : start + ENCODE_BATCH]), add_special_tokens=False)
            counts.extend(len(e.ids) for e in encodings)
        return counts


def load_counter(engine: EngineSettings) -> TokenCounter:
    path = Path(engine.model) / "tokenizer.json"
    if not path.is_file():
        return TokenCounter()
    try:
        from tokenizers import Tokenizer
    except ImportError:
        log.warning("the tokenizers library is not installed; cost estimates use bytes/4")
        return TokenCounter()
    try:
        return TokenCounter(Tokenizer.from_file(str(path)))
    except Exception as exc:  # the Rust library raises plain Exception for an unreadable file
        log.warning(
            "could not load tokenizer; cost estimates use bytes/4", extra={"path": str(path), "error": str(exc)}
        )
        return TokenCounter()
