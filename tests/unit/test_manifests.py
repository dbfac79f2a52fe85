"""The signed-manifest contract: canonical bytes, HMAC, and everything that must be refused."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dropbatch.errors import ManifestRejected
from dropbatch.models import InputObject
from manifests import (
    MANIFEST_VERSION,
    Manifest,
    build_manifest,
    canonical_payload,
    dumps,
    loads,
    sign,
    verify_signature,
)
from manifests.schema import MAX_MANIFEST_BYTES

SECRET = "s3cret-signing-key"
DATA = b'{"custom_id":"a"}\n'


def manifest_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "tenant": "acme",
        "job": "j1",
        "key_id": "key_0123456789abcdef",
        "inputs": [{"key": "acme/j1/input.jsonl", "size": len(DATA), "sha256": hashlib.sha256(DATA).hexdigest()}],
        "endpoint": "/v1/chat/completions",
        "model": "dropbatch-tiny",
        "metadata": {"team": "search"},
        "created_at": 1_700_000_000,
        "nonce": "nonce-0123456789abcdef",
    }
    fields.update(overrides)
    return fields


def signed(**overrides: Any) -> Manifest:
    return sign(Manifest(**manifest_fields(**overrides)), SECRET)


def test_sign_dumps_loads_verify_round_trip() -> None:
    manifest = signed()
    data = dumps(manifest)
    loaded = loads(data)
    assert loaded == manifest
    assert loaded.signature is not None and loaded.signature.startswith("hmac-sha256:")
    verify_signature(loaded, SECRET)
    assert dumps(loaded) == data


def test_canonical_payload_excludes_signature_and_is_compact() -> None:
    manifest = signed()
    payload = canonical_payload(manifest)
    assert b"signature" not in payload
    assert b" " not in payload.replace(b"dropbatch-tiny", b"")
    assert json.loads(payload)["version"] == MANIFEST_VERSION


def test_wrong_secret_fails_verification() -> None:
    with pytest.raises(ManifestRejected) as info:
        verify_signature(signed(), SECRET + "x")
    assert info.value.code == "bad_signature"


def test_build_manifest_hashes_the_files(tmp_path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(DATA * 3)
    manifest = build_manifest(
        [path], tenant="acme", job="j1", key_id="key_ab", endpoint="/v1/embeddings", model="m", created_at=5
    )
    assert manifest.inputs == [
        InputObject(key="acme/j1/in.jsonl", size=len(DATA) * 3, sha256=hashlib.sha256(DATA * 3).hexdigest())
    ]
    assert manifest.signature is None
    other = build_manifest(
        [path], tenant="acme", job="j1", key_id="key_ab", endpoint="/v1/embeddings", model="m", created_at=5
    )
    assert other.nonce != manifest.nonce  # a fresh nonce each time, so two uploads are two jobs


TAMPERED_FIELDS = {
    "tenant": "acme2",
    "job": "j2",
    "key_id": "key_fedcba9876543210",
    "inputs.key": "acme/j1/other.jsonl",
    "inputs.size": len(DATA) + 1,
    "inputs.sha256": "0" * 64,
    "endpoint": "/v1/completions",
    "model": "dropbatch-tiny-2",
    "metadata": {"team": "ads"},
    "created_at": 1_700_000_001,
    "nonce": "nonce-0123456789abcdeX",
}


@pytest.mark.parametrize("field", sorted(TAMPERED_FIELDS))
def test_changing_any_field_after_signing_fails_verification(field: str) -> None:
    original = signed()
    value = TAMPERED_FIELDS[field]
    fields = original.model_dump()
    if field.startswith("inputs."):
        fields["inputs"][0][field.split(".", 1)[1]] = value
    else:
        fields[field] = value
    if field == "tenant":
        fields["inputs"][0]["key"] = "acme2/j1/input.jsonl"  # stay a valid manifest
    changed = Manifest.model_validate(fields)
    assert changed.signature == original.signature
    assert changed != original
    with pytest.raises(ManifestRejected) as info:
        verify_signature(changed, SECRET)
    assert info.value.code == "bad_signature"
    # The same change made in the uploaded file is caught at the same point.
    reloaded = loads(dumps(changed))
    with pytest.raises(ManifestRejected):
        verify_signature(reloaded, SECRET)


@pytest.mark.parametrize(
    "edit",
    [
        lambda b: b.replace(b'  "endpoint"', b'   "endpoint"', 1),
        lambda b: b.rstrip(b"\n"),
        lambda b: b + b"\n",
        lambda b: b.replace(b": ", b":", 1),
        lambda b: json.dumps(json.loads(b), separators=(",", ":")).encode(),
        lambda b: json.dumps(dict(reversed(json.loads(b).items())), indent=2).encode() + b"\n",
    ],
    ids=["extra-space", "no-final-newline", "extra-newline", "compact-colon", "compact-file", "unsorted"],
)
def test_whitespace_or_layout_change_is_not_canonical(edit) -> None:
    data = dumps(signed())
    changed = edit(data)
    assert changed != data
    with pytest.raises(ManifestRejected) as info:
        loads(changed)
    assert info.value.code == "manifest_not_canonical"


def test_unsigned_manifest_is_rejected() -> None:
    with pytest.raises(ManifestRejected) as info:
        loads(dumps(Manifest(**manifest_fields())))
    assert info.value.code == "unsigned_manifest"


def _raw(**overrides: Any) -> bytes:
    """A signed manifest file with fields replaced *after* signing, bypassing the model."""
    fields = json.loads(dumps(signed()))
    fields.update(overrides)
    return (json.dumps(fields, sort_keys=True, indent=2) + "\n").encode()


@pytest.mark.parametrize(
    "overrides",
    [
        {"version": "dropbatch.manifest/v2"},
        {"extra": "field"},
        {"completion_window": "48h"},
        {"endpoint": "/v1/images"},
        {"tenant": "../etc"},
        {"job": ".hidden"},
        {"created_at": -1},
        {"inputs": []},
        {"model": ""},
    ],
    ids=lambda o: next(iter(o)),
)
def test_invalid_manifest_fields_are_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(ManifestRejected) as info:
        loads(_raw(**overrides))
    assert info.value.code == "invalid_manifest"
    assert info.value.message.startswith("The manifest is invalid at")


def test_not_json_is_invalid_manifest() -> None:
    for data in (b"", b"not json", b"[]", b"\xff\xfe", b'{"tenant": "acme"}'):
        with pytest.raises(ManifestRejected) as info:
            loads(data)
        assert info.value.code == "invalid_manifest"


@pytest.mark.parametrize(
    "key",
    [
        "acme/../other/x.jsonl",
        "other/x.jsonl",
        "/abs",
        "/acme/j1/x.jsonl",
        "acme/j/manifest.json",
        "acme/j/rejection.json",
        "acme",
        "acme/",
        "acme/j1/./x.jsonl",
        "acme//x.jsonl",
        "acme/j1/x y.jsonl",
        "acme/j1/x.jsonl\n",
    ],
)
def test_input_keys_must_stay_inside_the_tenant(key: str) -> None:
    inputs = [{"key": key, "size": 1, "sha256": "a" * 64}]
    with pytest.raises(ValidationError):
        Manifest(**manifest_fields(inputs=inputs))
    with pytest.raises(ManifestRejected) as info:
        loads(_raw(inputs=inputs))
    assert info.value.code == "invalid_manifest"


@pytest.mark.parametrize(
    "inputs",
    [
        [{"key": "acme/j1/a.jsonl", "size": 1, "sha256": "A" * 64}],
        [{"key": "acme/j1/a.jsonl", "size": 1, "sha256": "a" * 63}],
        [{"key": "acme/j1/a.jsonl", "size": 1, "sha256": "a" * 64 + "\n"}],
        [{"key": "acme/j1/a.jsonl", "size": -1, "sha256": "a" * 64}],
        [{"key": "acme/j1/a.jsonl", "size": 1, "sha256": "a" * 64}] * 2,
        [{"key": f"acme/j1/{i}.jsonl", "size": 1, "sha256": "a" * 64} for i in range(101)],
    ],
    ids=["upper-hex", "short-hex", "hex-newline", "negative-size", "duplicate-key", "too-many"],
)
def test_bad_input_entries_are_rejected(inputs: list[dict[str, Any]]) -> None:
    with pytest.raises(ValidationError):
        Manifest(**manifest_fields(inputs=inputs))


@pytest.mark.parametrize("nonce", ["short", "x" * 15, "x" * 129, "nonce with spaces!!", "nonce/0123456789abc", "", "x" * 16 + "\n"])
def test_bad_nonce_is_rejected(nonce: str) -> None:
    with pytest.raises(ValidationError):
        Manifest(**manifest_fields(nonce=nonce))
    with pytest.raises(ManifestRejected):
        loads(_raw(nonce=nonce))


@pytest.mark.parametrize("nonce", ["x" * 16, "x" * 128, "AZaz09_-AZaz09_-"])
def test_good_nonces_are_accepted(nonce: str) -> None:
    assert loads(dumps(signed(nonce=nonce))).nonce == nonce


@pytest.mark.parametrize(
    "metadata, ok",
    [
        ({f"k{i}": "v" for i in range(16)}, True),
        ({f"k{i}": "v" for i in range(17)}, False),
        ({"k" * 64: "v"}, True),
        ({"k" * 65: "v"}, False),
        ({"k": "v" * 512}, True),
        ({"k": "v" * 513}, False),
    ],
    ids=["16-pairs", "17-pairs", "key-64", "key-65", "value-512", "value-513"],
)
def test_metadata_limits(metadata: dict[str, str], ok: bool) -> None:
    if ok:
        assert loads(dumps(signed(metadata=metadata))).metadata == metadata
    else:
        with pytest.raises(ValidationError):
            Manifest(**manifest_fields(metadata=metadata))


def test_oversize_manifest_is_rejected_before_parsing() -> None:
    data = dumps(signed())
    padded = data[:-2] + b" " * (MAX_MANIFEST_BYTES - len(data) + 1) + data[-2:]
    assert len(padded) == MAX_MANIFEST_BYTES + 1
    with pytest.raises(ManifestRejected) as info:
        loads(padded)
    assert info.value.code == "manifest_too_large"


SIGNED_FILE = dumps(signed())


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(min_value=0, max_value=len(SIGNED_FILE) - 1), new=st.integers(min_value=0, max_value=255))
def test_every_single_byte_flip_is_refused(position: int, new: int) -> None:
    if SIGNED_FILE[position] == new:
        new = (new + 1) % 256
    flipped = SIGNED_FILE[:position] + bytes([new]) + SIGNED_FILE[position + 1 :]
    try:
        manifest = loads(flipped)
    except ManifestRejected:
        return
    with pytest.raises(ManifestRejected) as info:
        verify_signature(manifest, SECRET)
    assert info.value.code == "bad_signature"


@pytest.mark.parametrize("replacement", [None, ord("/"), ord(" "), ord('"'), ord("\n"), ord("0"), 0x80])
def test_every_position_flipped_is_refused(replacement: int | None) -> None:
    """The deterministic companion of the property test: every position, a few telling bytes."""
    for position, old in enumerate(SIGNED_FILE):
        new = old ^ 0x01 if replacement is None or replacement == old else replacement
        flipped = SIGNED_FILE[:position] + bytes([new]) + SIGNED_FILE[position + 1 :]
        try:
            manifest = loads(flipped)
        except ManifestRejected:
            continue
        with pytest.raises(ManifestRejected):
            verify_signature(manifest, SECRET)
