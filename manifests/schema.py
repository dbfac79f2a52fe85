"""What a manifest says: who, which job, exactly which bytes, how to run them."""

from __future__ import annotations

import re
from typing import get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dropbatch.deadlines import CompletionWindow
from dropbatch.errors import InvalidRequest
from dropbatch.models import ENDPOINTS, InputObject, RetryConfig
from dropbatch.storage.keys import MANIFEST_NAME, REJECTION_NAME, check_name

MANIFEST_VERSION = "dropbatch.manifest/v1"
MAX_MANIFEST_BYTES = 256 * 1024
MAX_INPUTS = 100
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_KEY_PART = re.compile(r"^[A-Za-z0-9._-]{1,255}$")


def _name(value: str, what: str) -> str:
    try:
        return check_name(value, what)
    except InvalidRequest as exc:
        raise ValueError(exc.message) from None


class Manifest(BaseModel):
    """A drop-box job, bound by an HMAC-SHA256 signature over its canonical bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = MANIFEST_VERSION
    tenant: str
    job: str
    key_id: str = Field(max_length=64)
    inputs: list[InputObject] = Field(min_length=1, max_length=MAX_INPUTS)
    endpoint: str
    model: str = Field(min_length=1, max_length=256)
    completion_window: str = "24h"
    metadata: dict[str, str] = Field(default_factory=dict)
    created_at: int = Field(ge=0)
    nonce: str
    retry_config: RetryConfig | None = None
    signature: str | None = None

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value != MANIFEST_VERSION:
            raise ValueError(f"unsupported manifest version {value!r}; expected {MANIFEST_VERSION!r}")
        return value

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return _name(value, "tenant")

    @field_validator("job")
    @classmethod
    def _job(cls, value: str) -> str:
        return _name(value, "job")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}")
        return value

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        if value not in get_args(CompletionWindow):
            raise ValueError(f"completion_window must be one of {', '.join(get_args(CompletionWindow))}")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items()):
            raise ValueError("metadata allows at most 16 pairs, keys up to 64 and values up to 512 characters")
        return value

    @field_validator("nonce")
    @classmethod
    def _nonce(cls, value: str) -> str:
        if not _NONCE.fullmatch(value):
            raise ValueError("nonce must be 16-128 characters of letters, digits, '_' or '-'")
        return value

    @model_validator(mode="after")
    def _inputs_inside_tenant(self) -> Manifest:
        seen = set()
        for item in self.inputs:
            parts = item.key.split("/")
            if (
                len(parts) < 2
                or parts[0] != self.tenant
                or not all(_KEY_PART.fullmatch(p) and p not in {".", ".."} for p in parts[1:])
            ):
                raise ValueError(f"input key {item.key!r} must be a plain key under '{self.tenant}/'")
            if parts[-1] in {MANIFEST_NAME, REJECTION_NAME}:
                raise ValueError(f"input key {item.key!r} names a reserved object")
            if not _HEX64.fullmatch(item.sha256) or item.size < 0:
                raise ValueError(f"input {item.key!r} needs a lowercase hex sha256 and a size")
            if item.key in seen:
                raise ValueError(f"input key {item.key!r} is listed twice")
            seen.add(item.key)
        return self
