"""One error tree for dropbatch, translated once at each boundary.

    DropbatchError
    ├── ConfigError
    ├── LeaseLost                    (another runner took over a batch this one was renewing)
    ├── StorageError                 (raised only from dropbatch.storage)
    │   ├── ObjectNotFound
    │   ├── WriteConflict
    │   │   ├── ObjectExists         (If-None-Match: * lost the race)
    │   │   └── StaleWrite           (If-Match on an ETag that moved on)
    │   └── StorageUnavailable       (still failing after the retries)
    ├── InvalidRequest               (400: the caller sent something malformed)
    │   ├── ManifestRejected         (a drop-box manifest that must not run)
    │   ├── UnservableRequest        (a request line asking for what the engine cannot do)
    │   ├── DeadlineUnreachable      (a batch projected to finish after its completion window)
    │   ├── UnprocessableRequest     (422: readable, but fields fail the schema)
    │   └── PayloadTooLarge          (413: an upload over the size limit)
    ├── AuthenticationFailed         (401)
    ├── PermissionDenied             (403)
    │   └── LocationNotGranted       (an S3 URI outside the tenant's prefixes and grants)
    ├── NotFound                     (404: no such batch/file for this tenant)
    │   └── OutputFileDeleted        (a batch's output or error file was deleted)
    ├── Conflict                     (409: not allowed in the current state)
    ├── QuotaExceeded                (429 at admission: tier's hourly lines used up)
    ├── RateLimited                  (429 on the wire, with retry_after)
    ├── EngineError                  (the inference engine failed as a whole)
    │   └── InputChanged             (an admitted input's bytes changed under the runner)
    └── PrometheusUnavailable        (the local Prometheus of the tests and bench did not answer)

Every class carries an OpenAI-style ``code`` and the HTTP status the gateway maps it
to, so the gateway and the watcher translate with one table, not per call site.
``openai_error`` is the one builder of OpenAI's error envelope
``{"error": {message, type, param, code}}``: the gateway, the CLI and the per-line
error results of a batch all go through it.
"""

from __future__ import annotations


def openai_error(message: str, *, type_: str, code: str | None, param: str | None = None) -> dict:
    """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class DropbatchError(Exception):
    """Root of every error dropbatch raises on purpose."""

    status_code = 500
    error_type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param

    def to_openai(self) -> dict:
        """The OpenAI error envelope for this error."""
        return openai_error(self.message, type_=self.error_type, code=self.code, param=self.param)


class ConfigError(DropbatchError):
    """Raised when settings are missing or contradictory at start-up."""

    code = "config_error"


class LeaseLost(DropbatchError):
    """Raised when renewing a batch's lease finds that another runner has taken the batch over."""

    status_code = 409
    code = "lease_lost"


class StorageError(DropbatchError):
    """Raised when the object store fails in a way no retry fixed."""

    code = "storage_error"


class ObjectNotFound(StorageError):
    """Raised when an object or bucket does not exist."""

    status_code = 404
    code = "not_found"


class WriteConflict(StorageError):
    """Raised when a conditional write lost to another writer."""

    status_code = 409
    code = "write_conflict"


class ObjectExists(WriteConflict):
    """Raised when a create (If-None-Match: *) finds the key already taken."""


class StaleWrite(WriteConflict):
    """Raised when an update (If-Match) was based on an ETag that has moved on."""


class StorageUnavailable(StorageError):
    """Raised when the object store stayed unreachable or throttled through every retry."""

    status_code = 503
    code = "storage_unavailable"


class InvalidRequest(DropbatchError):
    """Raised when a caller's input is malformed; ``line`` names the JSONL line if any."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param)
        self.line = line


class ManifestRejected(InvalidRequest):
    """Raised when a drop-box manifest fails verification; nothing of the job runs."""

    code = "manifest_rejected"


class UnservableRequest(InvalidRequest):
    """Raised when a valid-looking request line asks for something the engine cannot do."""


class DeadlineUnreachable(InvalidRequest):
    """Raised when a batch, behind the queued work at the measured throughput, would finish after its window."""

    code = "deadline_unreachable"


class UnprocessableRequest(InvalidRequest):
    """Raised when a readable request has fields that fail the schema (422)."""

    status_code = 422
    code = "invalid_value"


class PayloadTooLarge(InvalidRequest):
    """Raised when an upload passes the file size limit (413)."""

    status_code = 413
    code = "file_too_large"


class AuthenticationFailed(DropbatchError):
    """Raised when a bearer token is missing, unknown, expired or revoked."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(DropbatchError):
    """Raised when a valid principal asks for something its role does not allow."""

    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class LocationNotGranted(PermissionDenied):
    """Raised when a tenant names an S3 location it may not reach; one answer whether or not anything is there."""

    code = "location_not_granted"


class NotFound(DropbatchError):
    """Raised when a batch, file or tenant does not exist for the caller."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class OutputFileDeleted(NotFound):
    """Raised when a finished batch's output or error file was deleted, so its results cannot be read."""

    code = "output_file_deleted"


class Conflict(DropbatchError):
    """Raised when an operation is not allowed in the resource's current state."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class QuotaExceeded(DropbatchError):
    """Raised when admitting a batch would pass the tenant's hourly request-line quota."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_at: int) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class RateLimited(DropbatchError):
    """Raised when a token makes API calls faster than its tier allows."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineError(DropbatchError):
    """Raised when the inference engine fails as a whole (not one request line)."""

    code = "engine_error"


class InputChanged(EngineError):
    """Raised when an input object's bytes no longer match the sha256 recorded at admission."""

    code = "input_changed"


class PrometheusUnavailable(DropbatchError):
    """Raised when a Prometheus server (the tests' and bench's, never a service's) does not start or answer."""

    code = "prometheus_unavailable"
