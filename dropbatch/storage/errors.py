"""The one table that maps botocore failures (boto3 and aiobotocore alike) to the dropbatch error tree."""

from __future__ import annotations

import random

import aiohttp
import urllib3.exceptions
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ResponseStreamingError,
)

from dropbatch.errors import ObjectExists, ObjectNotFound, StaleWrite, StorageError, StorageUnavailable

NOT_FOUND = {
    "NoSuchKey",
    "NoSuchBucket",
    "404",
    "NotFound",
    "NoSuchUpload",
    "AWS.SimpleQueueService.NonExistentQueue",  # SQS, query protocol
    "QueueDoesNotExist",  # SQS, JSON protocol
}
# Creating a bucket that is already there (bootstrap is idempotent; Terraform may have made it).
ALREADY_EXISTS = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}
UNAVAILABLE = {"SlowDown", "ServiceUnavailable", "InternalError", "500", "503", "RequestTimeout", "Throttling"}
PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
# A body cut mid-read. botocore wraps this as ResponseStreamingError only for streamed bodies; for
# the small bodies it reads itself (XML results, error documents: convert_to_response_dict runs
# outside its try) the raw urllib3 ProtocolError escapes, unretried and outside BotoCoreError.
# aiobotocore wraps most aiohttp faults in botocore's errors; a payload error can still escape.
BODY_CUT = (
    ResponseStreamingError,
    IncompleteReadError,
    urllib3.exceptions.ProtocolError,
    aiohttp.ClientPayloadError,
)
_TRANSPORT = (ConnectionError, HTTPClientError, IncompleteReadError, urllib3.exceptions.HTTPError, aiohttp.ClientError)
AWS_ERRORS = (ClientError, BotoCoreError, urllib3.exceptions.HTTPError, aiohttp.ClientError)


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a ``ClientError`` (``NoSuchKey``, ``412`` …), None for transport faults."""
    if not isinstance(exc, ClientError):
        return None
    return str(exc.response.get("Error", {}).get("Code", ""))


def retried_precondition(exc: BaseException) -> bool:
    """A 412 on a retried attempt: the first attempt may have been ours, its answer lost."""
    if error_code(exc) not in PRECONDITION:
        return False
    return exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0  # type: ignore[attr-defined]


def translate(exc: BaseException, *, bucket: str, key: str, conditional: str | None = None) -> StorageError:
    """Map a botocore failure to the dropbatch error tree (the only such table)."""
    where = f"s3://{bucket}/{key}"
    if isinstance(exc, ClientError):
        code = error_code(exc) or ""
        if code in NOT_FOUND:
            return ObjectNotFound(f"{where} does not exist")
        # 412 PreconditionFailed; S3 may also answer 409 ConditionalRequestConflict
        # when two conditional writes race on one key.
        if code in PRECONDITION:
            if conditional == "if_none_match":
                return ObjectExists(f"{where} already exists")
            return StaleWrite(f"{where} changed since it was read")
        if code in ALREADY_EXISTS:
            return ObjectExists(f"{where} already exists")
        if code in UNAVAILABLE:
            return StorageUnavailable(f"{where}: {code} after retries")
        return StorageError(f"{where}: {code or 'error'}: {exc.response.get('Error', {}).get('Message', '')}")
    if isinstance(exc, _TRANSPORT):
        # HTTPClientError: ReadTimeoutError, ConnectionClosedError, ResponseStreamingError
        return StorageUnavailable(f"{where}: connection failed after retries: {exc}")
    return StorageError(f"{where}: {exc}")


def read_failure(exc: BaseException, *, bucket: str, key: str, etag: str | None) -> StorageError | StaleWrite | None:
    """What a failed ranged GET of a streamed read means: None when the range starts past the end
    (an empty object, or nothing more to read), ``StaleWrite`` when the object changed since the
    read began (``etag``), else the translated error."""
    code = error_code(exc)
    if code == "InvalidRange":
        return None
    if etag is not None and code in PRECONDITION:
        return StaleWrite(f"s3://{bucket}/{key} changed while it was being read")
    return translate(exc, bucket=bucket, key=key)


def retry_pause(attempt: int) -> float:
    """Seconds before retrying a cut body read: botocore standard mode's full jitter."""
    return min(20.0, random.random() * 2**attempt)
