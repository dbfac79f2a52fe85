"""completion_window through the OpenAI SDK: '24h' for everyone, '1h' for the priority tiers."""

from __future__ import annotations

import json

import openai
import pytest
from helpers import make_jsonl

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


def jsonl_bytes(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_priority_window_by_tier(live, tenant_token, sdk, drain) -> None:
    premium = sdk(live, tenant_token(live.ctx, "fastco", "premium").token)
    basic = sdk(live, tenant_token(live.ctx, "slowco", "basic").token)

    file = premium.files.create(file=("in.jsonl", jsonl_bytes(make_jsonl(2))), purpose="batch")
    batch = premium.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="1h")  # type: ignore[arg-type]
    assert batch.completion_window == "1h" and batch.expires_at == batch.created_at + 3600
    drain(live.ctx)
    done = premium.batches.retrieve(batch.id)
    assert done.status == "completed" and done.completion_window == "1h"
    assert done.expires_at == batch.expires_at

    other = basic.files.create(file=("in.jsonl", jsonl_bytes(make_jsonl(2))), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        basic.batches.create(input_file_id=other.id, endpoint=CHAT, completion_window="1h")  # type: ignore[arg-type]
    assert refused.value.code == "completion_window_not_allowed"
    assert refused.value.param == "completion_window"
    assert basic.batches.list().data == []  # nothing was made
    with pytest.raises(openai.UnprocessableEntityError):
        basic.batches.create(input_file_id=other.id, endpoint=CHAT, completion_window="2h")  # type: ignore[arg-type]
