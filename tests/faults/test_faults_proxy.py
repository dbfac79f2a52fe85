"""The proxy with no faults is invisible: everything dropbatch and the aws CLI do still works through it."""

from __future__ import annotations

import hashlib
import json

import pytest
from helpers import AwsCli
from proxy import FaultPlan

from dropbatch.errors import ObjectExists, StaleWrite
from dropbatch.storage.s3 import S3ObjectStore, make_client

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def _data(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def test_s3_calls_pass_through_unchanged(make_context, start_proxy):
    direct = make_context().settings
    proxy = start_proxy(FaultPlan(rate=0.0))
    store = S3ObjectStore(direct.with_endpoint(proxy.url).storage)
    bucket = direct.storage.inbox_bucket

    # A streamed multipart upload (three parts) and a full read back.
    big = _data(11 * MiB, 1)
    info = store.upload_stream(
        bucket, "t/j/big.jsonl", (big[i : i + MiB] for i in range(0, len(big), MiB)), part_size=5 * MiB
    )
    assert info.size == len(big)
    assert store.get(bucket, "t/j/big.jsonl")[0] == big
    # Range reads, streamed in small chunks.
    assert (
        b"".join(store.iter_bytes(bucket, "t/j/big.jsonl", start=5 * MiB - 3, end=5 * MiB + 7, chunk_size=4))
        == big[5 * MiB - 3 : 5 * MiB + 7]
    )
    # Conditional writes keep their meaning.
    etag = store.put(bucket, "t/j/c", b"one", if_none_match=True)
    with pytest.raises(ObjectExists):
        store.put(bucket, "t/j/c", b"two", if_none_match=True)
    newer = store.put(bucket, "t/j/c", b"two", if_match=etag)
    with pytest.raises(StaleWrite):
        store.put(bucket, "t/j/c", b"three", if_match=etag)
    assert store.get(bucket, "t/j/c") == (b"two", newer)
    assert store.head(bucket, "t/j/c").size == 3
    # Listing pages (continuation tokens) through the proxy.
    s3 = make_client("s3", direct.with_endpoint(proxy.url).storage)
    for i in range(5):
        store.put(bucket, f"p/{i}", b"x")
    pages = list(
        s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="p/", PaginationConfig={"PageSize": 2})
    )
    assert [[o["Key"] for o in page.get("Contents", [])] for page in pages] == [["p/0", "p/1"], ["p/2", "p/3"], ["p/4"]]

    counts = proxy.counts()
    assert sum(proxy.faults().values()) == 0
    assert counts["requests_s3"] >= 15


def test_sqs_json_protocol_passes_through(make_context, start_proxy):
    direct = make_context().settings
    proxy = start_proxy(FaultPlan(rate=0.0))
    sqs = make_client("sqs", direct.with_endpoint(proxy.url).storage)
    url = sqs.create_queue(QueueName="proxy-check")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"hello": "world"}))
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    assert [json.loads(m["Body"]) for m in messages] == [{"hello": "world"}]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=messages[0]["ReceiptHandle"])
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", []) == []
    assert proxy.counts()["requests_sqs"] == 5


def test_aws_cli_multipart_upload_and_download_through_the_proxy(make_context, start_proxy, aws, tmp_path):
    direct = make_context().settings
    proxy = start_proxy(FaultPlan(rate=0.0))
    cli = AwsCli(executable=aws.executable, endpoint=proxy.url, home=aws.home)
    source = tmp_path / "six.bin"
    source.write_bytes(_data(6 * MiB + 5, 2))
    bucket = direct.storage.inbox_bucket
    cli.upload(source, bucket, "t/j/six.bin", multipart_threshold="1")  # two parts
    assert cli.read(bucket, "t/j/six.bin") == source.read_bytes()
    assert sum(proxy.faults().values()) == 0
