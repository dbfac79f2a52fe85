"""``GetSigner`` signs a GET exactly as botocore's ``S3SigV4Auth`` does (the gateway's hot read)."""

from __future__ import annotations

from datetime import UTC, datetime
from unittest import mock
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from dropbatch.storage.signed import GetSigner

NOW = datetime(2026, 11, 30, 17, 5, 9, tzinfo=UTC)


def botocore_headers(url: str, region: str, credentials: ReadOnlyCredentials) -> dict[str, str]:
    request = AWSRequest(method="GET", url=url)
    request.context["payload_signing_enabled"] = True  # what botocore does for a body-less GET over http
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        S3SigV4Auth(credentials, "s3", region).add_auth(request)
    return {name.lower(): value for name, value in request.headers.items()}


LIST_QUERY = "encoding-type=url&list-type=2&max-keys=21&prefix=batches%2Fa%20b%2B&start-after=batches%2Fa%20b%2Bx"


@pytest.mark.parametrize(
    ("endpoint", "key", "query", "token"),
    [
        ("http://127.0.0.1:8333", "batches/t/batch_1.json", "", None),
        ("https://s3.eu-west-1.amazonaws.com", "tokens/ab cd+ü~x=y&z.json", "", None),
        ("https://s3.amazonaws.com:443", "a//double/slash.json", "", "session-token"),
        ("http://127.0.0.1:8333", "", LIST_QUERY, None),  # a ListObjectsV2 page of the bucket
    ],
)
def test_the_signature_is_botocores(endpoint, key, query, token):
    region = "eu-west-1"
    credentials = ReadOnlyCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    path = f"/bucket/{quote(key, safe='/~')}" if key else "/bucket"

    ours = GetSigner(endpoint, region, now=lambda: NOW).headers(path, credentials, query)
    theirs = botocore_headers(endpoint + path + (f"?{query}" if query else ""), region, credentials)

    assert ours["Authorization"] == theirs["authorization"]
    assert ours["x-amz-date"] == theirs["x-amz-date"] == "20261130T170509Z"
    assert ours.get("x-amz-security-token") == theirs.get("x-amz-security-token")

