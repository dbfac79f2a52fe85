"""Request bodies the gateway accepts, as strict pydantic models (also the OpenAPI schemas).

Strict: a string where a number belongs is a 422, never silently coerced.
Unknown fields are ignored, so newer SDKs sending newer optional fields still work.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from dropbatch.deadlines import CompletionWindow
from dropbatch.jsonl import MAX_CUSTOM_ID_LENGTH
from dropbatch.models import ExpiresAfter, RetryConfig

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]
MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)]

# Any id the gateway hands out (file-…, batch_…, job-…, tok_…) fits this; other text never reaches S3 as a key.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
ObjectId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
S3Uri = Annotated[str, StringConstraints(pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[\x21-\x7e]{1,1024}$")]

MAX_INLINE_ITEMS = 1000  # inline `input` beyond this is truncated, with a warning in the response


class _Body(BaseModel):
    # An unknown field is a 422 naming it: nothing a client sends is dropped without a word.
    model_config = ConfigDict(strict=True, extra="forbid")


RETRY_CONFIG_DESCRIPTION = (
    "dropbatch extension (send with the SDK's extra_body): retries of lines the engine "
    "failed, {max_retries, retry_delay, backoff_factor}; defaults 3, 1.0 s, 2.0."
)


class BatchCreate(_Body):
    """OpenAI's ``POST /v1/batches``."""

    input_file_id: ObjectId
    endpoint: Endpoint
    completion_window: CompletionWindow
    metadata: Metadata | None = None
    output_expires_after: ExpiresAfter | None = Field(
        None, description="The output and error files expire this many seconds after they are created."
    )
    retry_config: RetryConfig | None = Field(None, description=RETRY_CONFIG_DESCRIPTION)


class InlineItem(_Body):
    prompt: str = Field(min_length=1)
    custom_id: str | None = Field(None, min_length=1, max_length=MAX_CUSTOM_ID_LENGTH)


class _Generation(_Body):
    model: str | None = Field(None, min_length=1, max_length=256, description="Defaults to the served model.")
    max_tokens: int | None = Field(None, ge=1, le=1_000_000, description="Defaults to DROPBATCH_DEFAULT_MAX_TOKENS.")
    temperature: float | None = Field(None, ge=0, le=2)


class InlineBatchCreate(_Generation):
    """The original design's ``POST /v1/batches``: prompts inline, one chat completion each."""

    input: list[InlineItem] = Field(min_length=1)
    metadata: Metadata | None = None
    completion_window: CompletionWindow = "24h"
    retry_config: RetryConfig | None = Field(None, description=RETRY_CONFIG_DESCRIPTION)


class ValidateRequest(_Body):
    json_data: str | dict[str, Any] | list[Any] = Field(
        description="An inline batch body ({input, model, ...}), a list of items, or OpenAI JSONL text."
    )
    max_batch_size: int = Field(MAX_INLINE_ITEMS, ge=1, le=50_000)


class CostEstimateRequest(_Generation):
    input: list[InlineItem] | None = Field(None, min_length=1)
    input_file_id: ObjectId | None = None


class GenerateBatchRequest(_Generation):
    input: list[InlineItem] | None = Field(None, min_length=1)
    prompts: list[Annotated[str, StringConstraints(min_length=1)]] | None = Field(None, min_length=1)
    timeout: float = Field(60.0, gt=0, le=600, description="Seconds to wait before answering 202 with the batch id.")


class StartJobRequest(_Generation):
    input: S3Uri
    output: S3Uri
    metadata: Metadata | None = None


class TokenCreate(_Body):
    tenant: str = Field(min_length=1, max_length=128)
    tier: str | None = Field(None, min_length=1, max_length=64)
    expires_in: int | None = Field(None, ge=1, le=10 * 365 * 86400)
