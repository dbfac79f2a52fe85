"""Canonical bytes, HMAC-SHA256 signing and verification.

The signature covers the compact canonical JSON of every field but ``signature``.
The file itself must be exactly ``dumps(manifest)``, so a byte changed anywhere in
the uploaded object (even whitespace) is caught: either the signature or the
canonical form no longer matches.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from pydantic import ValidationError

from dropbatch.errors import ManifestRejected
from manifests.schema import MAX_MANIFEST_BYTES, Manifest

SIGNATURE_PREFIX = "hmac-sha256:"


def canonical_payload(manifest: Manifest) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, ASCII only, no signature."""
    payload = manifest.model_dump(mode="json", exclude={"signature"}, exclude_none=True)
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(manifest: Manifest, secret: str) -> Manifest:
    digest = hmac.new(secret.encode("utf-8"), canonical_payload(manifest), hashlib.sha256).hexdigest()
    return manifest.model_copy(update={"signature": SIGNATURE_PREFIX + digest})


def verify_signature(manifest: Manifest, secret: str) -> None:
    """Raise ``ManifestRejected`` unless ``manifest.signature`` is right for ``secret``."""
    expected = sign(manifest, secret).signature or ""
    if not hmac.compare_digest(expected.encode(), (manifest.signature or "").encode()):
        raise ManifestRejected("The manifest signature does not match its contents.", code="bad_signature")


def dumps(manifest: Manifest) -> bytes:
    """The one accepted file form of a manifest (readable, and byte-for-byte reproducible)."""
    document = manifest.model_dump(mode="json", exclude_none=True)
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode(
        "ascii"
    )


def loads(data: bytes) -> Manifest:
    """Parse an uploaded manifest; raises ``ManifestRejected`` with a readable reason."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestRejected(
            f"The manifest is {len(data)} bytes; at most {MAX_MANIFEST_BYTES} are allowed.", code="manifest_too_large"
        )
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "manifest"
        raise ManifestRejected(f"The manifest is invalid at {where}: {first.get('msg')}", code="invalid_manifest") from None
    if manifest.signature is None:
        raise ManifestRejected("The manifest is not signed.", code="unsigned_manifest")
    if dumps(manifest) != data:
        raise ManifestRejected(
            "The manifest bytes are not in canonical form: it was changed after signing "
            "(write it with `dropbatch manifest sign` and upload it unmodified).",
            code="manifest_not_canonical",
        )
    return manifest
