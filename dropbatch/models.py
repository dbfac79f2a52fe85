"""OpenAI's Batch and File shapes, and the records dropbatch keeps around them."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dropbatch.errors import Conflict

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")


class BatchStatus(str, Enum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def timestamp_field(self) -> str:
        return f"{self.value}_at"


TERMINAL = frozenset({BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED})

_NEXT: dict[BatchStatus, frozenset[BatchStatus]] = {
    BatchStatus.VALIDATING: frozenset({BatchStatus.FAILED, BatchStatus.IN_PROGRESS, BatchStatus.COMPLETED, BatchStatus.CANCELLING}),
    BatchStatus.IN_PROGRESS: frozenset(
        {BatchStatus.FINALIZING, BatchStatus.EXPIRED, BatchStatus.CANCELLING, BatchStatus.FAILED}
    ),
    BatchStatus.FINALIZING: frozenset({BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED}),
    BatchStatus.CANCELLING: frozenset({BatchStatus.CANCELLED}),
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RequestCounts(_Model):
    total: int = 0
    completed: int = 0
    failed: int = 0


class InputTokensDetails(_Model):
    cached_tokens: int = 0


class OutputTokensDetails(_Model):
    reasoning_tokens: int = 0


class Usage(_Model):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0

    def add(self, input_tokens: int, output_tokens: int) -> None:
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.total_tokens = self.input_tokens + self.output_tokens


def token_counts(usage: Mapping[str, Any] | None) -> tuple[int, int]:
    """(input, output) tokens of a response body's ``usage``: chat and completions name them
    prompt/completion_tokens, the Responses API input/output_tokens, embeddings have prompt only."""
    usage = usage or {}
    return (int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0),
            int(usage.get("completion_tokens") or usage.get("output_tokens") or 0))


class BatchError(_Model):
    code: str
    message: str
    line: int | None = None
    param: str | None = None


class BatchErrors(_Model):
    object: Literal["list"] = "list"
    data: list[BatchError] = Field(default_factory=list)


class Batch(_Model):
    """The OpenAI Batch object, field for field."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str = "24h"
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None
    model: str | None = None
    usage: Usage | None = None


class RetryConfig(BaseModel):
    """How a request line the engine failed (a server-side error) is retried.

    Attempt n (1-based) waits ``retry_delay * backoff_factor ** (n - 1)`` seconds:
    1 s, 2 s, 4 s by default. Client errors (a prompt over the context length, an
    invalid request) are never retried: they would fail the same way.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # false is not 0 s, "3" not 3

    max_retries: int = Field(3, ge=0, le=10)
    retry_delay: float = Field(1.0, ge=0, le=300)
    backoff_factor: float = Field(2.0, ge=1, le=10)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return self.retry_delay * self.backoff_factor ** (attempt - 1)


MIN_EXPIRY_SECONDS = 3600  # OpenAI's bounds for expires_after / output_expires_after
MAX_EXPIRY_SECONDS = 2_592_000


class ExpiresAfter(BaseModel):
    """OpenAI's expiration policy for a file (``files.create``'s ``expires_after``,
    ``batches.create``'s ``output_expires_after``): ``seconds`` after the file's creation."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_EXPIRY_SECONDS, le=MAX_EXPIRY_SECONDS)

    def expires_at(self, created_at: int) -> int:
        return created_at + self.seconds


class InputObject(_Model):
    """One input object of a job, as its manifest binds it."""

    key: str
    size: int
    sha256: str


class Chunk(_Model):
    """A byte range of one input holding whole lines: the unit of work and of progress."""

    index: int
    input: int
    start: int
    end: int
    first_line: int
    lines: int
    sha256: str
    prompt_chars: int = Field(0, description="Characters of prompt text in the chunk (for the batching planner).")
    max_tokens: int = Field(0, description="Largest max_tokens of any line in the chunk.")


class ResultLocation(_Model):
    bucket: str
    prefix: str
    output_key: str
    errors_key: str
    summary_key: str


class BatchRecord(Batch):
    """A Batch plus what the services need to run it; stored in the control bucket."""

    tenant: str
    job: str
    source: Literal["dropbox", "api"] = "dropbox"
    manifest_key: str | None = None
    inputs: list[InputObject] = Field(default_factory=list)
    input_etags: list[str] = Field(
        default_factory=list, description="ETags of the inputs as admitted; a runner refuses changed bytes."
    )
    chunks: list[Chunk] = Field(default_factory=list)
    content_sha256: str | None = None
    result: ResultLocation | None = None
    cached: bool = Field(False, description="Completed from an existing outbox prefix; no engine run.")
    retry_config: RetryConfig | None = Field(None, description="Per-batch retry policy; settings apply if unset.")
    output_expires_after: ExpiresAfter | None = Field(
        None, description="When the output and error files expire (counted from their creation); never if unset."
    )
    duplicate_lines: int = Field(0, description="Lines answered by copying an identical deterministic line's result.")
    warnings: list[BatchError] = Field(
        default_factory=list, description="Admitted anyway, e.g. projected to miss its window (deadline_at_risk)."
    )
    updated_at: int = 0

    def openai(self) -> dict[str, Any]:
        """The public Batch object (what the gateway returns)."""
        return Batch.model_validate(self.model_dump(include=set(Batch.model_fields))).model_dump(mode="json")

    def transition(self, status: BatchStatus, now: int) -> None:
        """Move to ``status`` along OpenAI's lifecycle, stamping ``<status>_at``."""
        if status == self.status:
            return
        if status not in _NEXT.get(self.status, frozenset()):
            raise Conflict(
                f"batch {self.id} is {self.status.value}; it cannot become {status.value}",
                code="invalid_state",
            )
        self.status = status
        setattr(self, status.timestamp_field, now)
        self.updated_at = now

    def fail(self, errors: list[BatchError], now: int) -> None:
        self.errors = BatchErrors(data=errors)
        self.transition(BatchStatus.FAILED, now)


class FileObject(_Model):
    """The OpenAI File object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileRecord(FileObject):
    """A File plus where its bytes live."""

    tenant: str
    bucket: str
    key: str
    sha256: str | None = None
    batch_id: str | None = None

    def live_at(self, now: float) -> bool:
        """Not yet past its ``expires_at`` (expired files answer 404 before the sweep deletes them)."""
        return self.expires_at is None or now < self.expires_at

    def openai(self) -> dict[str, Any]:
        return FileObject.model_validate(self.model_dump(include=set(FileObject.model_fields))).model_dump(mode="json")
