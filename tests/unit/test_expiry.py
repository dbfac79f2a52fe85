"""File expiry: the policy's bounds, 404 from the due second, and the sweep's order (a fake clock)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dropbatch.errors import NotFound
from dropbatch.expiry import sweep_expired
from dropbatch.models import ExpiresAfter, FileRecord
from dropbatch.storage.keys import ControlKeys


def upload(ctx, file_id: str, *, expires_at: int | None) -> FileRecord:
    key = f"acme/.files/{file_id}.jsonl"
    ctx.store.put(ctx.inbox, key, b"{}\n")
    record = FileRecord(
        id=file_id,
        bytes=3,
        created_at=ctx.now(),
        filename="in.jsonl",
        purpose="batch",
        expires_at=expires_at,
        tenant="acme",
        bucket=ctx.inbox,
        key=key,
    )
    ctx.files.create(record)
    return record


@pytest.mark.parametrize(
    "policy",
    [
        {"anchor": "created_at", "seconds": 3599},
        {"anchor": "created_at", "seconds": 2_592_001},
        {"anchor": "created_at", "seconds": "3600"},
        {"anchor": "batch", "seconds": 3600},
        {"seconds": 3600},
        {"anchor": "created_at", "seconds": 3600, "extra": 1},
    ],
)
def test_policy_outside_openais_shape_is_refused(policy) -> None:
    with pytest.raises(ValidationError):
        ExpiresAfter.model_validate(policy)


def test_policy_counts_from_the_anchor() -> None:
    assert ExpiresAfter(anchor="created_at", seconds=3600).expires_at(100) == 3700


def test_a_file_is_gone_from_its_due_second_and_the_sweep_stops_at_now(make_context, make_clock) -> None:
    clock = make_clock()
    ctx = make_context(clock=clock)
    now = ctx.now()
    soon = upload(ctx, "file-soon", expires_at=now + 10)
    later = upload(ctx, "file-later", expires_at=now + 20)
    upload(ctx, "file-never", expires_at=None)

    clock.advance(9)
    assert sweep_expired(ctx) == 0 and ctx.files.get("acme", soon.id).id == soon.id
    clock.advance(1)
    with pytest.raises(NotFound):
        ctx.files.get("acme", soon.id)
    assert sorted(f.id for f in ctx.files.list("acme")[0]) == ["file-later", "file-never"]
    assert sweep_expired(ctx) == 1
    assert [k.rsplit("/", 1)[1] for k in ctx.records.list_keys(ControlKeys.EXPIRY_PREFIX)] == ["file-later.json"]
    assert [info.key for info in ctx.store.list(ctx.inbox)] == [later.key, "acme/.files/file-never.jsonl"]
    clock.advance(10)
    assert sweep_expired(ctx) == 1 and list(ctx.records.list_keys(ControlKeys.EXPIRY_PREFIX)) == []
    assert [info.key for info in ctx.store.list(ctx.inbox)] == ["acme/.files/file-never.jsonl"]
