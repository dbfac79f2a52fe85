"""Two served models side by side on real vLLM (a chat model and an embedding model): each batch runs on the
warm engine of the model its lines name, and the embedding model never loads a generate engine."""

from __future__ import annotations

import pytest
from conftest import SECOND_MODEL
from openai import OpenAI
from soak import submit
from test_warm_engine import outputs

from dropbatch.models import BatchStatus

pytestmark = pytest.mark.e2e

DEFAULT = "dropbatch-tiny"


def chat_lines(model: str, n: int = 12) -> list[dict]:
    return [
        {"custom_id": f"c-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": model, "messages": [{"role": "user", "content": f"same prompt {i}"}],
                  "max_tokens": 12, "temperature": 0}}
        for i in range(n)
    ]


def test_each_batch_runs_on_the_engine_of_the_model_it_names(stack):
    stack.ctx.tenants.create("e2e-models", "enterprise")
    refs = {model: submit(stack.ctx, "e2e-models", f"on-{model}", chat_lines(model), model=model)
            for model in (DEFAULT, SECOND_MODEL)}
    embed_lines = [{"custom_id": f"e-{i}", "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": SECOND_MODEL, "input": [f"text {i}", "more"], "encoding_format": "float"}}
                   for i in range(5)]
    refs["embed"] = submit(stack.ctx, "e2e-models", "embed", embed_lines, endpoint="/v1/embeddings", model=SECOND_MODEL)
    before = set(stack.engine.engine._actors)  # earlier tests of the session may have started some
    stack.drain()
    records = {name: stack.ctx.batches.for_job(ref) for name, ref in refs.items()}
    assert {name: r.status for name, r in records.items()} == dict.fromkeys(refs, BatchStatus.COMPLETED), {
        name: r.errors for name, r in records.items()}
    got = {name: outputs(stack, r) for name, r in records.items()}
    assert all(line["response"]["status_code"] == 200 for line in got[DEFAULT].values())
    assert {line["response"]["body"]["model"] for line in got[DEFAULT].values()} == {DEFAULT}
    vectors = got["embed"]["e-0"]["response"]["body"]
    assert vectors["model"] == SECOND_MODEL and len(vectors["data"]) == 2 and len(vectors["data"][0]["embedding"]) == 128
    # The second model is an embedding model: chat lines to it are each a clear error, from its embed engine.
    assert records[SECOND_MODEL].request_counts.failed == len(got[SECOND_MODEL]) == 12
    errors = {line["response"]["status_code"]: line["response"]["body"]["error"]["code"]
              for line in got[SECOND_MODEL].values()}
    assert errors == {400: "unsupported_endpoint"}
    assert records[DEFAULT].content_sha256 != records[SECOND_MODEL].content_sha256
    engines = set(stack.engine.engine._actors)
    assert {f"dropbatch-engine/{DEFAULT}/generate/0", f"dropbatch-engine/{SECOND_MODEL}/embed/0"} <= engines
    # The runner started the embedding model's embed engine with itself, and never a generate engine for it.
    assert f"dropbatch-engine/{SECOND_MODEL}/embed/0" in before
    assert not any(name.startswith(f"dropbatch-engine/{SECOND_MODEL}/generate/") for name in engines)
    # This drain started an embed engine only for the model its embeddings batch named.
    assert f"dropbatch-engine/{DEFAULT}/embed/0" not in engines - before


def test_the_gateway_lists_both_models(stack):
    stack.ctx.tenants.create("e2e-models-sdk", "enterprise")
    client = OpenAI(base_url=stack.gateway_url + "/v1", api_key=stack.ctx.tokens.create("e2e-models-sdk").token,
                    max_retries=0)
    assert [m.id for m in client.models.list().data] == [DEFAULT, SECOND_MODEL]
    assert client.models.retrieve(SECOND_MODEL).object == "model"
    client.close()
