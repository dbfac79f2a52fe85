"""Building a manifest from local files (the client side of `dropbatch manifest sign`)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from pathlib import Path

from dropbatch.deadlines import DEFAULT_WINDOW
from dropbatch.models import InputObject
from manifests.schema import Manifest


def file_digest(path: Path, *, chunk_size: int = 1024 * 1024) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def build_manifest(
    files: Sequence[Path],
    *,
    tenant: str,
    job: str,
    key_id: str,
    endpoint: str,
    model: str,
    created_at: int,
    metadata: dict[str, str] | None = None,
    input_keys: Sequence[str] | None = None,
    nonce: str | None = None,
    completion_window: str = DEFAULT_WINDOW,
) -> Manifest:
    """An unsigned manifest binding ``files`` as ``<tenant>/<job>/<file name>`` (or ``input_keys``)."""
    keys = list(input_keys) if input_keys is not None else [f"{tenant}/{job}/{Path(f).name}" for f in files]
    inputs = []
    for path, key in zip(files, keys, strict=True):
        sha256, size = file_digest(Path(path))
        inputs.append(InputObject(key=key, size=size, sha256=sha256))
    return Manifest(
        tenant=tenant,
        job=job,
        key_id=key_id,
        inputs=inputs,
        endpoint=endpoint,
        model=model,
        metadata=metadata or {},
        completion_window=completion_window,
        created_at=created_at,
        nonce=nonce or secrets.token_urlsafe(18),
    )
