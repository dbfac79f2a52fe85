"""The signed-manifest contract between a drop-box client and the watcher."""

from manifests.build import build_manifest, file_digest
from manifests.schema import MANIFEST_VERSION, Manifest
from manifests.signing import canonical_payload, dumps, loads, sign, verify_signature

__all__ = [
    "MANIFEST_VERSION",
    "Manifest",
    "build_manifest",
    "canonical_payload",
    "dumps",
    "file_digest",
    "loads",
    "sign",
    "verify_signature",
]
