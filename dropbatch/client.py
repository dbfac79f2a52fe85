"""A small Python client for the gateway's original-design API (also importable as ``openai_batch_client``).

    from dropbatch.client import BatchClient

    with BatchClient("http://127.0.0.1:8000", api_key=token) as client:
        batch = client.create_batch(["Hello", "Name three colours"], max_tokens=32)
        client.wait_for_completion(batch["id"], poll_interval=2, timeout=600)
        for item in client.get_batch_results(batch["id"])["data"]:
            print(item["input"]["prompt"], "→", item["output_text"])

For the OpenAI Files + Batch API use the ``openai`` SDK itself with
``base_url="http://HOST:8000/v1"``. Errors come back as dropbatch errors carrying
the gateway's status and code (``NotFound``, ``AuthenticationFailed``, ...).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import httpx

from dropbatch.errors import (
    AuthenticationFailed,
    Conflict,
    DropbatchError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
)

__all__ = ["BatchClient", "create_batch", "get_batch_results", "retrieve_batch"]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
_ERRORS: dict[int, type[DropbatchError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
}


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("error") or {}
    except ValueError:
        detail = {}
    message = detail.get("message") or f"HTTP {response.status_code} from {response.request.url}"
    code = detail.get("code")
    if response.status_code == 429:
        retry = response.headers.get("retry-after", "1")
        raise RateLimited(message, retry_after=int(retry) if retry.isdigit() else 1)
    cls = _ERRORS.get(response.status_code, DropbatchError)
    error = cls(message, code=code, param=detail.get("param"))
    error.status_code = response.status_code
    raise error


def _items(prompts: Iterable[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"prompt": p} if isinstance(p, str) else dict(p) for p in prompts]


class BatchClient:
    """HTTP client for one gateway and one API key (``httpx`` underneath; use as a context manager)."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        root = base_url.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=root, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._http.request(method, path, **kwargs)
        _raise_for(response)
        return response.json()

    def health(self) -> dict[str, Any]:
        response = self._http.get("/health")
        if response.status_code not in (200, 503):
            _raise_for(response)
        return response.json()

    def create_batch(
        self,
        prompts: Iterable[str | Mapping[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Submit prompts (strings or ``{"prompt", "custom_id"}``) as one batch; returns the Batch (+ warnings)."""
        body: dict[str, Any] = {"input": _items(prompts)}
        for name, value in (("model", model), ("max_tokens", max_tokens), ("temperature", temperature)):
            if value is not None:
                body[name] = value
        if metadata:
            body["metadata"] = dict(metadata)
        return self._call("POST", "/v1/batches", json=body)

    def retrieve_batch(self, batch_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/batches/{batch_id}")

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/batches/{batch_id}/cancel")

    def get_batch_results(self, batch_id: str) -> dict[str, Any]:
        """``{"data": [{custom_id, input: {prompt}, output_text, tokens_generated, error}, ...]}``."""
        return self._call("GET", f"/v1/batches/{batch_id}/results")

    def wait_for_completion(self, job_id: str, poll_interval: float = 2.0, timeout: float = 600.0) -> dict[str, Any]:
        """Poll the batch ``job_id`` until it is completed, failed, expired or cancelled.

        Returns the final Batch; raises ``TimeoutError`` if it is still running after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            batch = self.retrieve_batch(job_id)
            if batch["status"] in TERMINAL_STATUSES:
                return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"batch {job_id} is still {batch['status']} after {timeout} s")
            time.sleep(min(poll_interval, remaining))

    def validate_input(self, json_data: Any, max_batch_size: int = 1000) -> dict[str, Any]:
        """``{is_valid, errors, warnings, estimated_items}`` for an inline body, items, or JSONL text."""
        return self._call(
            "POST", "/v1/batches/validate", json={"json_data": json_data, "max_batch_size": max_batch_size}
        )

    def estimate_cost(
        self,
        prompts: Iterable[str | Mapping[str, Any]] | None = None,
        *,
        input_file_id: str | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
    ) -> dict[str, Any]:
        """``{input_tokens, max_output_tokens, estimated_cost_usd, tokenizer, ...}``."""
        body: dict[str, Any] = {}
        if prompts is not None:
            body["input"] = _items(prompts)
        if input_file_id is not None:
            body["input_file_id"] = input_file_id
        if model is not None:
            body["model"] = model
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return self._call("POST", "/v1/batches/cost-estimate", json=body)

    def generate_batch(self, prompts: Iterable[str], *, timeout: float = 60.0, **options: Any) -> dict[str, Any]:
        """Submit and wait server-side (``/generate_batch``); a 202 answer means not finished in time."""
        body = {"prompts": list(prompts), "timeout": timeout, **options}
        response = self._http.post("/generate_batch", json=body, timeout=timeout + 30)
        _raise_for(response)
        return response.json()

    def start_job(self, input_uri: str, output_uri: str, **options: Any) -> dict[str, Any]:
        return self._call("POST", "/start", json={"input": input_uri, "output": output_uri, **options})

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{job_id}")


def create_batch(
    prompts: Iterable[str | Mapping[str, Any]],
    *,
    base_url: str = DEFAULT_BASE_URL,
    api_key: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    with BatchClient(base_url, api_key) as client:
        return client.create_batch(prompts, **options)


def retrieve_batch(batch_id: str, *, base_url: str = DEFAULT_BASE_URL, api_key: str | None = None) -> dict[str, Any]:
    with BatchClient(base_url, api_key) as client:
        return client.retrieve_batch(batch_id)


def get_batch_results(batch_id: str, *, base_url: str = DEFAULT_BASE_URL, api_key: str | None = None) -> dict[str, Any]:
    with BatchClient(base_url, api_key) as client:
        return client.get_batch_results(batch_id)
