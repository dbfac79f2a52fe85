"""A plain SigV4-signed GET of one small object: the gateway's hot read without botocore's per-call machinery.

Reading a record through aiobotocore costs about 1 ms of CPU (event hooks, endpoint
rules, user agent, response parsing), and a list page reads 20 of them. ``SignedGet``
signs the same path-style GET with botocore's own S3 signer and sends it over a pooled
aiohttp session: about 0.3 ms. It answers only what it can answer alone: a 200, and a
404 (raised as the ``ClientError`` botocore would raise, so the one error table in
``dropbatch.storage.errors`` translates it). Anything else (403, throttling, 5xx, a
cut or refused connection, a timeout) returns None and the caller asks aiobotocore, so
its retries and error parsing stay the only ones.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import aiohttp
import yarl
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError

_ERROR_CODE = re.compile(rb"<Code>([^<]+)</Code>")


class SignedGet:
    """GETs of objects at ``endpoint_url`` (path-style, as dropbatch's clients address S3), signed for ``region``.

    ``credentials`` is an aiobotocore credentials object (static or refreshable); the
    session is opened on first use inside the running loop and closed by ``close()``.
    """

    def __init__(
        self, endpoint_url: str, region: str, credentials: Any, *, pool_size: int, connect_timeout: float, read_timeout: float
    ) -> None:
        self._endpoint = endpoint_url.rstrip("/")
        self._region = region
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
        url = f"{self._endpoint}/{bucket}/{quote(key, safe='/~')}"
        request = AWSRequest(method="GET", url=url, headers={"Accept-Encoding": "identity"})  # the object's own bytes
        S3SigV4Auth(await self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(request)
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size), timeout=self._timeout, auto_decompress=False
            )
        try:
            async with self._http.get(yarl.URL(url, encoded=True), headers=dict(request.headers.items())) as resp:
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
