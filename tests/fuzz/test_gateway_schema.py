"""schemathesis against the gateway's own /openapi.json: no 500s, responses match the schema, OpenAI error shapes.

The app is ``gateway.app.create_app`` over a Context on the in-memory store, loaded
through schemathesis' ASGI support; the tenant already has an uploaded file and a
completed batch (watcher + runner with the echo engine stand-in), so list and
retrieve answers carry real objects. Every generated request carries a valid
bearer token (the admin token for /admin routes); generation is deterministic.

Checks per response: no server error, status code / content type / headers / body
conform to the schema, invalid data is rejected, auth is not ignored, and every
4xx/5xx body is OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest
import schemathesis
from fuzz_support import CASES, chat_line, encode_line, fuzz_settings
from hypothesis import given, note
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import Failure
from starlette.testclient import TestClient

from dropbatch.context import Context
from dropbatch.engine.echo import EchoEngine
from dropbatch.settings import Settings
from dropbatch.storage.memory import MemoryObjectStore
from gateway.app import create_app
from gateway.files import store_upload
from gateway.ratelimit import TierRate
from gateway.schemas import GenerateBatchRequest
from gateway.submit import submit_batch
from runner.service import Runner
from watcher.service import Watcher

EXAMPLES_PER_OPERATION = 40
ADMIN_TOKEN = "admin-schemathesis-0123456789abcdef"
GENEROUS = TierRate(per_minute=10**9, burst=10**9)  # rate limits are tested elsewhere; here they would hide bugs
MAX_WAIT_SECONDS = 1.0  # /generate_batch waits up to `timeout` for a runner that is not running here
MAX_TIMEOUT = GenerateBatchRequest.model_json_schema()["properties"]["timeout"]["maximum"]


@dataclass
class World:
    app: object
    token: str


def build_world() -> World:
    """The app over a memory Context whose tenant has an uploaded file and a completed batch (no I/O)."""
    settings = Settings.from_env({"DROPBATCH_ADMIN_TOKEN": ADMIN_TOKEN, "DROPBATCH_CHUNK_LINES": "2"})
    storage = settings.storage
    ctx = Context(
        settings=settings,
        store=MemoryObjectStore([storage.inbox_bucket, storage.outbox_bucket, storage.control_bucket]),
    )
    ctx.tenants.create("acme", "basic")
    token = ctx.tokens.create("acme").token
    app = create_app(
        settings,
        ctx=ctx,
        token_cache_seconds=0,
        rate_limits={t: GENEROUS for t in ("free", "basic", "premium", "enterprise")},
        attempt_rate=GENEROUS,  # failed authentication per address: tested in tests/security
    )
    data = b"".join(encode_line(chat_line(f"r-{i}", f"hello {i}")) + b"\n" for i in range(3))
    asyncio.run(submit_file(app.state.gateway, data))
    Watcher(ctx).run_once()
    Runner(ctx, EchoEngine(ctx.store, settings)).run_once()
    return World(app=app, token=token)


async def submit_file(gw, data: bytes) -> None:
    async def chunks():
        yield data

    file = await store_upload(gw, "acme", chunks(), filename="input.jsonl")
    await submit_batch(gw, "acme", file, endpoint="/v1/chat/completions", metadata={"k": "v"})


# Loaded at collection: schemathesis' fixture-based loader (`schemathesis.pytest.from_fixture`)
# fails on pytest 9 (it sets `request.node._nodeid`, which pytest 9 no longer has).
WORLD = build_world()
schema = schemathesis.openapi.from_asgi("/openapi.json", WORLD.app)
schema.config.generation.update(
    max_examples=EXAMPLES_PER_OPERATION,
    deterministic=True,
    database="none",
    # The token is ours to send (below); unknown query parameters are ignored, as OpenAI does.
    with_security_parameters=False,
    allow_extra_parameters=True,
)


def openai_error_shape(ctx, response, case) -> bool | None:
    """Every error answer is OpenAI's envelope, whatever the status."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise Failure(
            operation=case.operation.label, title="Error body is not JSON", message=response.text[:200]
        ) from None
    error = body.get("error") if isinstance(body, dict) else None
    ok = (
        isinstance(error, dict)
        and isinstance(error.get("message"), str)
        and isinstance(error.get("type"), str)
        and (error.get("param") is None or isinstance(error.get("param"), str))
        and (error.get("code") is None or isinstance(error.get("code"), str))
    )
    if not ok:
        raise Failure(
            operation=case.operation.label, title="Error body is not OpenAI's error shape", message=response.text[:300]
        )
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]


@schema.parametrize()
def test_gateway_answers_every_generated_request_by_its_schema(case):
    CASES[f"tests/fuzz/test_gateway_schema.py[{case.operation.label}]"] += 1
    if case.path == "/generate_batch" and isinstance(case.body, dict):
        # No runner runs here: a valid request would wait its whole timeout (60 s by default).
        # Past the schema's maximum it is a negative case, which must be refused at once: keep it.
        timeout = case.body.get("timeout", MAX_WAIT_SECONDS + 1)
        if (
            isinstance(timeout, (int, float))
            and not isinstance(timeout, bool)
            and MAX_WAIT_SECONDS < timeout <= MAX_TIMEOUT
        ):
            case.body["timeout"] = MAX_WAIT_SECONDS
    token = ADMIN_TOKEN if case.path.startswith("/admin") else WORLD.token
    case.call_and_validate(
        headers={"Authorization": f"Bearer {token}"}, checks=CHECKS, additional_checks=[openai_error_shape]
    )


# -- what schemathesis cannot send: JSON escapes of any code point (lone surrogates too) -------------

# Lone surrogates, NUL, quotes, separators and emoji often; any other code point too.
SPECIAL = st.sampled_from(
    ["\ud800", "\udbff", "\udc00", "\udfff", "\x00", '"', "\\", "/", "\u2028", "\U0001f600", "\ufeff"]
)
ANY_TEXT = st.lists(st.one_of(SPECIAL, st.characters()), max_size=8).map("".join)


def _jsonl_line(text: str) -> str:
    return json.dumps(
        {
            **chat_line("c", "x"),
            "body": {**chat_line("c", "x")["body"], "messages": [{"role": "user", "content": text}]},
        }
    )


ESCAPED_BODIES = {
    "/v1/batches/validate (text)": ("/v1/batches/validate", lambda t: {"json_data": t}),
    "/v1/batches/validate (jsonl)": ("/v1/batches/validate", lambda t: {"json_data": _jsonl_line(t)}),
    "/v1/batches (inline)": ("/v1/batches", lambda t: {"input": [{"prompt": t or "p", "custom_id": t or "c"}]}),
    "/v1/batches (file id)": (
        "/v1/batches",
        lambda t: {"input_file_id": t, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    ),
    "/generate_batch": ("/generate_batch", lambda t: {"prompts": [t or "p"], "timeout": 0.05}),
    "/v1/batches/cost-estimate": ("/v1/batches/cost-estimate", lambda t: {"input": [{"prompt": t or "p"}]}),
    "/start": ("/start", lambda t: {"input": f"s3://dropbatch-inbox/acme/{t}", "output": "s3://elsewhere/out/"}),
    "/admin/tokens": ("/admin/tokens", lambda t: {"tenant": t}),
}


@pytest.mark.parametrize("name", sorted(ESCAPED_BODIES))
def test_escaped_code_points_in_json_bodies_never_make_a_500(name):
    path, make = ESCAPED_BODIES[name]
    token = ADMIN_TOKEN if path.startswith("/admin") else WORLD.token
    client = TestClient(WORLD.app, raise_server_exceptions=False)

    @fuzz_settings(30)
    @given(ANY_TEXT)
    def check(text: str) -> None:
        CASES[f"tests/fuzz/test_gateway_schema.py[escapes {name}]"] += 1
        note(f"text, ASCII-escaped: {ascii(text)}")
        body = json.dumps(make(text), ensure_ascii=True)  # valid JSON whatever the text holds
        response = client.post(
            path, content=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            error = response.json()["error"]
            assert isinstance(error["message"], str) and isinstance(error["type"], str)

    check()
