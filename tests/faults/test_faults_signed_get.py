"""The gateway's hot read is a plain signed GET; every answer it cannot give alone goes to aiobotocore.

``AsyncS3ObjectStore.get`` answers 200 and 404 itself (one request each). A throttle,
a 5xx, a reset connection or a cut body is asked again through aiobotocore, whose
retries then read the whole object; a permanent error reaches the caller through the
one error table, the same as before the signed GET existed.
"""

from __future__ import annotations

import pytest
from helpers import with_async_store
from proxy import DenyRule, FaultPlan, TargetedFault

from dropbatch.errors import ObjectNotFound, StorageError
from dropbatch.storage.s3 import S3ObjectStore

pytestmark = pytest.mark.integration

BODY = b'{"id": "batch_1", "status": "in_progress"}\n' * 500
KEY = "batches/t/rec ord+1.json"  # a key that must be percent-encoded the way botocore signs it


def _read(storage, key: str) -> tuple[bytes, str]:
    return with_async_store(storage, lambda store: store.get(storage.control_bucket, key))


@pytest.fixture
def proxied(make_context, start_proxy):
    direct = make_context().settings
    S3ObjectStore(direct.storage).put(direct.storage.control_bucket, KEY, BODY)
    proxy = start_proxy(FaultPlan())
    return direct, proxy, direct.with_endpoint(proxy.url)


def test_found_and_missing_objects_take_one_request(proxied):
    direct, proxy, settings = proxied
    expected = S3ObjectStore(direct.storage).get(direct.storage.control_bucket, KEY)

    assert _read(settings.storage, KEY) == expected
    with pytest.raises(ObjectNotFound):
        _read(settings.storage, "batches/t/missing.json")

    assert proxy.counts()["requests_s3"] == 2


@pytest.mark.parametrize("kind", ["slowdown", "internal", "reset_before", "reset_mid"])
def test_a_failed_signed_get_is_read_again_through_aiobotocore(kind, proxied):
    direct, proxy, settings = proxied
    proxy.set(targeted=[TargetedFault(kind, r"/rec ord\+1\.json$", "GET")])

    body, etag = _read(settings.storage, KEY)

    assert proxy.faults()[kind] == 1
    assert (body, etag) == S3ObjectStore(direct.storage).get(direct.storage.control_bucket, KEY)
    assert proxy.counts()["requests_s3"] == 2  # the broken signed GET, then aiobotocore's


def test_a_denied_read_is_the_error_aiobotocore_reports(proxied):
    _, proxy, settings = proxied
    proxy.set(deny=[DenyRule(r"/rec ord\+1\.json$")])

    with pytest.raises(StorageError, match="AccessDenied"):
        _read(settings.storage, KEY)

    assert proxy.counts()["requests_s3"] == 2
