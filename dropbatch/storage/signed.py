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
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit
from xml.etree import ElementTree

import aiohttp
import yarl
from botocore.exceptions import ClientError
from botocore.utils import parse_timestamp

from dropbatch.storage.base import ObjectInfo

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

    def headers(self, path: str, credentials: Any, query: str = "") -> dict[str, str]:
        """Headers that sign ``GET path?query`` (both already in canonical, percent-encoded form)."""
        stamp = self.now().strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        headers = {"host": self.host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": stamp}
        if credentials.token:
            headers["x-amz-security-token"] = credentials.token
        names = ";".join(headers)  # already in sorted order
        canonical = "\n".join(
            ["GET", path, query, *(f"{name}:{value}" for name, value in headers.items()), "", names, EMPTY_SHA256]
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
    """GETs and LIST pages at ``endpoint_url`` (path-style, as dropbatch's clients address S3), signed for ``region``.

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

    async def _fetch(self, path: str, query: str, operation: str) -> tuple[bytes, Any] | None:
        """(body, headers) of a 200; ``ClientError`` for a 404; None for anything else."""
        headers = self._signer.headers(self._prefix + path, await self._credentials.get_frozen_credentials(), query)
        headers["Accept-Encoding"] = "identity"  # the object's own bytes, never a transfer-compressed copy
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size), timeout=self._timeout, auto_decompress=False
            )
        url = yarl.URL(f"{self._endpoint}{path}?{query}" if query else self._endpoint + path, encoded=True)
        try:
            async with self._http.get(url, headers=headers) as resp:
                body = await resp.read()
                status, answer = resp.status, resp.headers
        except (TimeoutError, aiohttp.ClientError):
            return None
        if status == 200:
            return body, answer
        if status == 404:
            match = _ERROR_CODE.search(body)
            code = match.group(1).decode() if match else "404"
            raise ClientError({"Error": {"Code": code, "Message": "Not Found"}}, operation)
        return None

    async def get(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        """(body, ETag) of the object; ``ClientError`` when S3 says 404; None when aiobotocore should ask."""
        found = await self._fetch(f"/{bucket}/{quote(key, safe='/~')}", "", "GetObject")
        if found is None or found[1].get("ETag") is None:
            return None
        return found[0], found[1]["ETag"]

    async def list_page(
        self, bucket: str, prefix: str, *, start_after: str | None, token: str | None, page_size: int
    ) -> tuple[list[ObjectInfo], str | None] | None:
        """One ListObjectsV2 page: (objects, the next page's token or None); None when aiobotocore should ask."""
        params = {"list-type": "2", "encoding-type": "url", "max-keys": str(page_size), "prefix": prefix}
        if token is not None:
            params["continuation-token"] = token
        elif start_after:
            params["start-after"] = start_after
        query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))
        found = await self._fetch(f"/{bucket}", query, "ListObjectsV2")
        if found is None:
            return None
        try:
            root = ElementTree.fromstring(found[0])
        except ElementTree.ParseError:
            return None
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        infos = [
            ObjectInfo(
                key=unquote_plus(item.findtext(f"{ns}Key", "")),
                size=int(item.findtext(f"{ns}Size", "0")),
                etag=item.findtext(f"{ns}ETag", ""),
                last_modified=fast_timestamp(item.findtext(f"{ns}LastModified", "")).timestamp(),
            )
            for item in root.iter(f"{ns}Contents")
        ]
        truncated = root.findtext(f"{ns}IsTruncated", "false") == "true"
        return infos, (root.findtext(f"{ns}NextContinuationToken") if truncated else None)


def fast_timestamp(text: str) -> datetime:
    """S3's two timestamp forms (ISO 8601 in XML, RFC 7231 in headers) without dateutil's general parser."""
    try:
        if text[:1].isdigit():
            return datetime.fromisoformat(text)
        return parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return parse_timestamp(text)
