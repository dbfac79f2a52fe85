"""Grants: parsing S3 URIs, path-safe prefix matching, and what a tenant may read and write."""

from __future__ import annotations

import asyncio

import pytest

from dropbatch.aiorecords import AsyncRecords
from dropbatch.auth.grants import AsyncGrants, Grant, S3Location
from dropbatch.errors import InvalidRequest, LocationNotGranted, NotFound
from dropbatch.storage.keys import ControlKeys
from dropbatch.storage.threaded import ThreadedObjectStore


def async_grants(ctx) -> AsyncGrants:
    """The gateway's grant checks (``AsyncGrants``, what /start and /jobs await) over ``ctx``'s records."""
    records = AsyncRecords(ThreadedObjectStore(ctx.store), ctx.settings.storage.control_bucket)
    return AsyncGrants(records, storage=ctx.settings.storage)


def check_read(ctx, tenant: str, location: S3Location, *, param: str) -> None:
    asyncio.run(async_grants(ctx).check_read(tenant, location, param=param))


def check_write(ctx, tenant: str, locations: list[S3Location], *, param: str) -> bool:
    return asyncio.run(async_grants(ctx).check_write(tenant, locations, param=param))


def grant(prefix: str, bucket: str = "data") -> Grant:
    return Grant(id="grant_0", tenant="a", bucket=bucket, prefix=prefix, read=True, write=False, created_at=0)


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://data/a/b.jsonl", "data", "a/b.jsonl"),
        ("s3://data/a/b/", "data", "a/b/"),
        ("s3://data/", "data", ""),
        ("s3://data", "data", ""),
        ("s3://my.bucket-1/x", "my.bucket-1", "x"),
        ("s3://data/a/.hidden/..x/x..", "data", "a/.hidden/..x/x.."),
    ],
)
def test_parse_accepts(uri: str, bucket: str, key: str) -> None:
    assert S3Location.parse(uri, param="p") == S3Location(bucket, key)


@pytest.mark.parametrize(
    "uri",
    [
        "http://data/a",
        "s3:/data/a",
        "s3://Data/a",
        "s3://d/a",
        "s3://da..ta/a",
        "s3://data//a",
        "s3://data/a//b",
        "s3://data/a/../b",
        "s3://data/../data2/x",
        "s3://data/./a",
        "s3://data/a/.",
        "s3://data/a/..",
        "s3://data/a/b//",
        "s3://data/a\\b",
        "s3://data/a b",
        "s3://data/é",
        "s3://data/a\n",
        "s3://data/" + "k" * 1025,
        "",
        None,
    ],
)
def test_parse_rejects_every_ambiguous_spelling(uri) -> None:
    with pytest.raises(InvalidRequest) as info:
        S3Location.parse(uri, param="input")
    assert (info.value.code, info.value.param) == ("invalid_s3_uri", "input")


@pytest.mark.parametrize("uri", ["s3://data/", "s3://data", "s3://data/a/"])
def test_an_object_key_names_one_object(uri: str) -> None:
    with pytest.raises(InvalidRequest):
        S3Location.parse(uri, param="input", object_key=True)
    assert S3Location.parse("s3://data/a", param="input", object_key=True).key == "a"


@pytest.mark.parametrize(
    ("prefix", "key", "covered"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/b/", True),
        ("a/b", "a/b/c.jsonl", True),
        ("a/b", "a/b/c/d", True),
        ("a/b", "a/bc", False),
        ("a/b", "a/bc/d", False),
        ("a/b", "a/b.errors.jsonl", False),
        ("a/b", "a", False),
        ("a/b", "a/", False),
        ("a/b", "", False),
        ("a/b", "A/b/c", False),
        ("", "anything/at/all", True),
        ("", "", True),
        ("out/result.jsonl", "out/result.jsonl", True),
        ("out/result.jsonl", "out/result.jsonl.errors.jsonl", False),
    ],
)
def test_covers_by_whole_path_segments(prefix: str, key: str, covered: bool) -> None:
    assert grant(prefix).covers(S3Location("data", key)) is covered


def test_covers_only_its_own_bucket() -> None:
    assert not grant("a").covers(S3Location("data2", "a/x"))
    assert not grant("").covers(S3Location("dat", "a"))


def test_create_list_and_revoke(make_context, make_clock) -> None:
    clock = make_clock()
    ctx = make_context(clock=clock)
    ctx.tenants.create("a", "basic")
    made = ctx.grants.create("a", "s3://data/in/", read=True, write=False)
    assert (made.bucket, made.prefix, made.read, made.write, made.overwrite) == ("data", "in", True, False, False)
    assert made.uri == "s3://data/in" and made.id.startswith("grant_")
    assert ctx.records.get(ControlKeys.grant("a", made.id), Grant) == made
    out = ctx.grants.create("a", "s3://data/out", read=False, write=True, overwrite=True)
    assert {g.id for g in ctx.grants.list("a")} == {made.id, out.id}

    clock.advance(5)
    revoked = ctx.grants.revoke("a", made.id)
    assert revoked.revoked_at == int(clock())
    assert ctx.grants.revoke("a", made.id).revoked_at == revoked.revoked_at  # idempotent
    assert [g.id for g in ctx.grants.active("a")] == [out.id]
    assert len(list(ctx.grants.list("a"))) == 2  # revoked grants stay listed


def test_revoke_needs_the_tenants_own_grant_id(make_context) -> None:
    ctx = make_context()
    ctx.tenants.create("a", "basic")
    ctx.tenants.create("b", "basic")
    made = ctx.grants.create("a", "s3://data/in", read=True, write=False)
    for tenant, grant_id in (("b", made.id), ("a", "grant_ffffffffffffffff"), ("a", "../x"), ("a", "")):
        with pytest.raises(NotFound):
            ctx.grants.revoke(tenant, grant_id)
    assert ctx.grants.active("a") == [made]


@pytest.mark.parametrize(
    ("uri", "flags", "param"),
    [
        ("s3://data/in", {"read": False, "write": False}, "read"),
        ("s3://data/in", {"read": True, "write": False, "overwrite": True}, "overwrite"),
        ("s3://dropbatch-inbox/a/", {"read": True, "write": False}, "uri"),
        ("s3://dropbatch-outbox/", {"read": False, "write": True}, "uri"),
        ("s3://dropbatch-control/tokens", {"read": True, "write": False}, "uri"),
        ("s3://data/a/../b", {"read": True, "write": False}, "uri"),
    ],
)
def test_bad_grants_are_refused(make_context, uri: str, flags: dict, param: str) -> None:
    ctx = make_context()
    ctx.tenants.create("a", "basic")
    with pytest.raises(InvalidRequest) as info:
        ctx.grants.create("a", uri, **flags)
    assert info.value.param == param
    assert list(ctx.grants.list("a")) == []


def test_a_grant_needs_an_existing_tenant(make_context) -> None:
    with pytest.raises(NotFound):
        make_context().grants.create("nobody", "s3://data/in", read=True, write=False)


def test_read_and_write_decisions(make_context) -> None:
    ctx = make_context()
    for tenant in ("a", "b"):
        ctx.tenants.create(tenant, "basic")
    ctx.grants.create("a", "s3://data/in", read=True, write=False)
    ctx.grants.create("a", "s3://data/out", read=False, write=True)
    ctx.grants.create("a", "s3://data/out/replace", read=False, write=True, overwrite=True)

    def readable(tenant: str, uri: str) -> bool:
        try:
            check_read(ctx, tenant, S3Location.parse(uri, param="input"), param="input")
        except LocationNotGranted as exc:
            assert (exc.status_code, exc.param) == (403, "input")
            return False
        return True

    assert readable("a", "s3://dropbatch-inbox/a/job/x.jsonl")
    assert readable("a", "s3://dropbatch-outbox/a/sha/output.jsonl")
    assert readable("a", "s3://data/in/x.jsonl")
    assert not readable("a", "s3://data/inx/x.jsonl")
    assert not readable("a", "s3://data/out/x.jsonl")  # write-only
    assert not readable("a", "s3://dropbatch-inbox/b/job/x.jsonl")
    assert not readable("a", "s3://dropbatch-inbox/ab/x.jsonl")
    assert not readable("a", "s3://dropbatch-control/a/x")
    assert not readable("b", "s3://data/in/x.jsonl")  # a's grant is a's alone

    def writable(tenant: str, *keys: str) -> bool | None:
        try:
            return check_write(ctx, tenant, [S3Location("data", k) for k in keys], param="output")
        except LocationNotGranted:
            return None

    assert writable("a", "out/output.jsonl", "out/errors.jsonl") is False  # granted, no overwrite
    assert writable("a", "out/replace/o.jsonl", "out/replace/e.jsonl") is True
    assert writable("a", "out/replace/o.jsonl", "out/o.jsonl") is False  # overwrite only if every target allows it
    assert writable("a", "out/o.jsonl", "outx/e.jsonl") is None  # every target must be granted
    assert writable("a", "in/o.jsonl") is None  # read-only
    assert writable("b", "out/o.jsonl") is None
    with pytest.raises(LocationNotGranted):
        check_write(ctx, "a", [S3Location("dropbatch-outbox", "a/x")], param="output")


def test_refusals_are_one_answer(make_context) -> None:
    ctx = make_context()
    ctx.tenants.create("a", "basic")
    answers = set()
    for uri in ("s3://dropbatch-control/tokens/x", "s3://dropbatch-inbox/b/x", "s3://nope/x", "s3://data/x"):
        with pytest.raises(LocationNotGranted) as info:
            check_read(ctx, "a", S3Location.parse(uri, param="input"), param="input")
        answers.add(str(info.value.to_openai()))
    assert len(answers) == 1


def test_revoked_grants_cover_nothing(make_context) -> None:
    ctx = make_context()
    ctx.tenants.create("a", "basic")
    made = ctx.grants.create("a", "s3://data/in", read=True, write=True)
    location = S3Location("data", "in/x")
    check_read(ctx, "a", location, param="input")
    ctx.grants.revoke("a", made.id)
    with pytest.raises(LocationNotGranted):
        check_read(ctx, "a", location, param="input")
    with pytest.raises(LocationNotGranted):
        check_write(ctx, "a", [location], param="output")
