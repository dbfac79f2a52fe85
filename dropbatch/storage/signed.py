"""A plain SigV4-signed GET of one small object: the gateway's hot read without botocore's per-call machinery.

Reading a record through aiobotocore costs about 1 ms of CPU (event hooks, endpoint
rules, user agent, response parsing), and a list page reads 20 of them. ``SignedGet``
signs the same path-style GET the way botocore's S3 signer does (``GetSigner``) and
sends it over a pooled aiohttp session: about 0.2 ms. It answers only what it can answer alone: a 200, and a
404 (raised as the ``ClientError`` botocore would raise, so the one error table in
``dropbatch.storage.errors`` translates it). Anything else (403, throttling, 5xx, a
cut or refused connection, a timeout) returns None and the caller asks aiobotocore, so
its retries and error parsing stay the only ones.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import yarl
from botocore.exceptions import ClientError

_ERROR_CODE = re.compile(rb"<Code>([^<]+)</Code>")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # a GET has no body: always the signed payload hash


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


class GetSigner:
    """SigV4 headers of a body-less S3 GET, as botocore's ``S3SigV4Auth`` signs it.

    botocore's signer rebuilds the request, parses the URL and derives the day's
    signing key on every call (a third of a signed GET's CPU); this derives the key
    once a day per credentials and hashes two short strings per GET.
    """

    def __init__(self, endpoint_url: str, region: str, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        parts = urlsplit(endpoint_url)
        default = {"http": 80, "https": 443}.get(parts.scheme)
        host = parts.hostname or ""
        self.host = f"[{host}]" if ":" in host else host
        if parts.port is not None and parts.port != default:
            self.host = f"{self.host}:{parts.port}"
        self.region = region
        self.now = now
        self._key: tuple[tuple[str, str], bytes] | None = None

    def _signing_key(self, secret: str, day: str) -> bytes:
        if self._key is None or self._key[0] != (secret, day):
            key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret}".encode(), day), self.region), "s3"), "aws4_request")
            self._key = ((secret, day), key)
        return self._key[1]

    def headers(self, path: str, credentials: Any) -> dict[str, str]:
        """Headers that sign ``GET path`` (already percent-encoded, no query) with frozen ``credentials``."""
        stamp = self.now().strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        headers = {"host": self.host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": stamp}
        if credentials.token:
            headers["x-amz-security-token"] = credentials.token
        names = ";".join(headers)  # already in sorted order
        canonical = "\n".join(
            ["GET", path, "", *(f"{name}:{value}" for name, value in headers.items()), "", names, EMPTY_SHA256]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(credentials.secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        del headers["host"]  # aiohttp sends it, the same way
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, SignedHeaders={names}, Signature={signature}"
        )
        return headers


class SignedGet:
    """GETs of objects at ``endpoint_url`` (path-style, as dropbatch's clients address S3), signed for ``region``.

    ``credentials`` is an aiobotocore credentials object (static or refreshable); the
    session is opened on first use inside the running loop and closed by ``close()``.
    """

    def __init__(
        self, endpoint_url: str, region: str, credentials: Any, *, pool_size: int, connect_timeout: float, read_timeout: float
    ) -> None:
        self._endpoint = endpoint_url.rstrip("/")
        self._signer = GetSigner(endpoint_url, region)
        self._prefix = urlsplit(self._endpoint).path
        self._credentials = credentials
        self._pool_size = pool_size
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=read_timeout)
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    async def get(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        """(body, ETag) of the object; ``ClientError`` when S3 says 404; None when aiobotocore should ask."""
        path = f"/{bucket}/{quote(key, safe='/~')}"
        headers = self._signer.headers(self._prefix + path, await self._credentials.get_frozen_credentials())
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size), timeout=self._timeout, auto_decompress=False
            )
        try:
            async with self._http.get(yarl.URL(self._endpoint + path, encoded=True), headers=headers) as resp:
                body = await resp.read()
                etag = resp.headers.get("ETag")
                status = resp.status
        except (TimeoutError, aiohttp.ClientError):
            return None
        if status == 200 and etag is not None:
            return body, etag
        if status == 404:
            match = _ERROR_CODE.search(body)
            code = match.group(1).decode() if match else "404"
            raise ClientError({"Error": {"Code": code, "Message": "Not Found"}}, "GetObject")
        return None
