"""The warm engine's pure parts: vLLM flags, planned limits, rows in and result lines out."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from test_planner import TINY

from dropbatch.engine.base import WorkChunk
from dropbatch.engine.tinymodel import write_embedding_modules
from dropbatch.errors import ConfigError
from dropbatch.ids import completion_id, request_line_id
from dropbatch.settings import Settings
from runner.engine.flags import vllm_args, worker_env
from runner.engine.limits import engine_limits
from runner.engine.lines import line_result
from runner.engine.pipeline import Barrier
from runner.engine.reap import remove_socket_dirs, socket_dir
from runner.engine.scaling import ReplicaPlan
from runner.engine.stream import request_rows
from runner.engine.tasks import served_by_model, served_tasks


def chunk(data: bytes, **fields) -> WorkChunk:
    base = dict(batch_id="batch_1", chunk=0, content_sha256="c" * 64, endpoint="/v1/chat/completions",
                model="dropbatch-tiny", bucket="inbox", key="t/j/in.jsonl", start=0, end=len(data), first_line=1,
                lines=data.count(b"\n"), sha256="s", created=1_700_000_000)
    return WorkChunk(**{**base, **fields})


def test_flags_follow_the_settings_and_the_plan():
    engine = Settings.from_env({"DROPBATCH_ENABLE_PREFIX_CACHING": "0", "DROPBATCH_KV_CACHE_DTYPE": "fp8"}).engine
    args = vllm_args(engine, {"max_num_seqs": 64, "max_num_batched_tokens": 4096})
    assert args[args.index("--max-num-seqs") + 1] == "64"
    assert args[args.index("--max-num-batched-tokens") + 1] == "4096"
    assert "--no-enable-prefix-caching" in args and args[args.index("--kv-cache-dtype") + 1] == "fp8"
    assert json.loads(args[args.index("--override-generation-config") + 1]) == {"max_new_tokens": 256}


def test_tool_calling_and_whitespace_free_grammars_are_engine_flags():
    args = vllm_args(Settings.from_env({}).engine)
    assert "--enable-auto-tool-choice" in args and args[args.index("--tool-call-parser") + 1] == "hermes"
    assert json.loads(args[args.index("--structured-outputs-config") + 1]) == {
        "backend": "xgrammar", "disable_any_whitespace": True}
    off = vllm_args(Settings.from_env({"DROPBATCH_TOOL_CALL_PARSER": "none",
                                       "DROPBATCH_STRUCTURED_OUTPUTS_CONFIG": "{}"}).engine)
    assert "--enable-auto-tool-choice" not in off and "--tool-call-parser" not in off
    assert "--structured-outputs-config" not in off


def test_each_served_model_is_its_own_engine_and_hub_ids_go_online(tmp_path):
    engine = Settings.from_env({"DROPBATCH_MODELS": f"chat={tmp_path},embed={tmp_path}"}).engine
    assert engine.for_model("embed").model_name == "embed"
    assert worker_env(engine, "s")["HF_HUB_OFFLINE"] == "1"
    mixed = Settings.from_env({"DROPBATCH_MODELS": f"chat={tmp_path},qwen=Qwen/Qwen2.5-0.5B-Instruct"}).engine
    assert worker_env(mixed, "s")["HF_HUB_OFFLINE"] == "0"


def model_dir(path, architecture: str, *, embedding_modules: bool = False):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({**TINY, "architectures": [architecture]}))
    if embedding_modules:
        write_embedding_modules(path)
    return path


def test_an_embedding_model_serves_embeddings_only_and_starts_no_generate_engine(tmp_path):
    chat = model_dir(tmp_path / "chat", "Qwen2ForCausalLM")
    # A sentence-transformers model on a causal-LM architecture, as the tiny embed model is built.
    embed = model_dir(tmp_path / "embed", "Qwen2ForCausalLM", embedding_modules=True)
    named = model_dir(tmp_path / "named", "Qwen2EmbeddingModel")
    engine = Settings.from_env({"DROPBATCH_MODELS": f"chat={chat},embed={embed},named={named},hub=org/not-here"}).engine
    assert served_by_model(engine) == {"chat": ("generate", "embed"), "embed": ("embed",), "named": ("embed",),
                                       "hub": ("generate", "embed")}


def test_a_bare_model_architecture_or_unreadable_config_stays_generative(tmp_path):
    # vLLM's registry, not the suffix, decides "*Model" (ChatGLMModel generates): never lose chat on a guess.
    assert served_tasks(str(model_dir(tmp_path / "glm", "ChatGLMModel"))) == ("generate", "embed")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "modules.json").write_text('{"not": "a list"}')
    assert served_tasks(str(broken)) == ("generate", "embed")


def test_limits_come_from_the_planner_unless_set(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    planned = engine_limits(Settings.from_env({"DROPBATCH_MODEL": str(tmp_path)}).engine, device="cpu",
                            gpu_memory_bytes=None)
    assert planned["max_num_seqs"] > 0 and planned["max_num_batched_tokens"] > 0
    explicit = Settings.from_env({"DROPBATCH_MODEL": str(tmp_path), "DROPBATCH_MAX_NUM_SEQS": "7"}).engine
    assert engine_limits(explicit, device="cpu", gpu_memory_bytes=None)["max_num_seqs"] == 7
    hub = Settings.from_env({"DROPBATCH_MODEL": "Qwen/Qwen2.5-0.5B-Instruct"}).engine
    assert engine_limits(hub, device="cpu", gpu_memory_bytes=None) == {}


def test_rows_carry_bodies_as_json_text_and_skip_lines_not_retried():
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "dropbatch-tiny", "messages": [{"role": "user", "content": "hi"}], **extra}}
        for i, extra in enumerate([{"seed": 5}, {}, {"stop": ["a"], "top_p": 0.5}])
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    rows = request_rows(chunk(data), data, "engine-0", max_line_bytes=1 << 20)
    assert [r["custom_id"] for r in rows] == ["r0", "r1", "r2"]
    assert json.loads(rows[0]["body_json"])["seed"] == 5 and isinstance(rows[0]["body_json"], str)
    assert {r["status"] for r in rows} == {0} and {r["engine"] for r in rows} == {"engine-0"}
    retried = request_rows(chunk(data, only=("r1",)), data, "engine-0", max_line_bytes=1 << 20)
    assert [r["custom_id"] for r in retried] == ["r1"]


def test_a_line_that_no_longer_parses_is_answered_without_the_engine():
    data = b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": 7}\n'
    (row,) = request_rows(chunk(data), data, "engine-0", max_line_bytes=1 << 20)
    assert row["status"] == 400 and "error" in json.loads(row["body_json"])


def test_result_lines_get_ids_from_the_content_address():
    c = chunk(b"\n")
    body = {"id": "chatcmpl-random", "created": 123, "object": "chat.completion", "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    row = {"custom_id": "r0", "status": 200, "body_json": json.dumps(body), "prompt_tokens": 3, "completion_tokens": 2}
    result = line_result(c, row)
    assert result.ok and (result.prompt_tokens, result.completion_tokens) == (3, 2)
    assert result.line["id"] == request_line_id(c.content_sha256, "r0")
    assert result.line["response"]["body"]["id"] == completion_id(c.content_sha256, "r0", "chatcmpl")
    assert result.line["response"]["body"]["created"] == c.created
    error = {"error": {"message": "n must be 1", "type": "BadRequestError", "param": None, "code": "invalid_request"}}
    failed = line_result(c, {**row, "status": 400, "body_json": json.dumps(error)})
    assert not failed.ok and failed.completion_tokens == 0
    assert failed.line["response"] == {"status_code": 400, "request_id": failed.line["response"]["request_id"],
                                       "body": error}


def test_tool_call_and_responses_ids_are_derived_not_drawn():
    data = b"{}\n"
    message = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "chatcmpl-tool-random", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    row = {"custom_id": "r0", "status": 200, "prompt_tokens": 1, "completion_tokens": 1,
           "body_json": json.dumps({"id": "x", "created": 1, "choices": [{"index": 0, "message": message}]})}
    first = line_result(chunk(data), row).line["response"]["body"]
    assert first == line_result(chunk(data), row).line["response"]["body"]
    assert first["choices"][0]["message"]["tool_calls"][0]["id"].startswith("call_")
    assert first["choices"][0]["message"]["tool_calls"][0]["id"] != "chatcmpl-tool-random"
    row["body_json"] = json.dumps({"id": "resp_random", "created_at": 5, "object": "response"})
    answer = line_result(chunk(data, endpoint="/v1/responses"), row).line["response"]["body"]
    assert answer["id"].startswith("resp_") and answer["created_at"] == 1_700_000_000


def test_replicas_grow_with_queued_lines_at_once_and_shrink_only_after_a_quiet_spell(make_clock):
    clock = make_clock(0)
    plan = ReplicaPlan(1, 3, 1000, 60.0, clock=clock)
    assert plan.want(0, 1) == 1
    assert plan.want(1001, 1) == 2  # more than one replica's share queued: grow now
    assert plan.want(50_000, 2) == 3  # never past the most
    assert plan.want(10, 3) == 3  # the queue drained: keep them for now
    clock.now = 59.0
    assert plan.want(10, 3) == 3
    assert plan.want(2500, 3) == 3  # needed again: the quiet spell starts over
    assert plan.want(10, 3) == 3
    clock.now = 118.0
    assert plan.want(10, 3) == 3
    clock.now = 120.0
    assert plan.want(10, 3) == 1  # quiet for 60 s: back to the least


def test_replica_range_settings():
    engine = Settings.from_env({"DROPBATCH_ENGINE_REPLICAS_MAX": "4"}).engine
    assert (engine.replicas, engine.most_replicas) == (1, 4)
    assert Settings.from_env({"DROPBATCH_ENGINE_REPLICAS": "2"}).engine.most_replicas == 2
    with pytest.raises(ConfigError, match="DROPBATCH_ENGINE_REPLICAS_MAX=1 is below"):
        Settings.from_env({"DROPBATCH_ENGINE_REPLICAS": "2", "DROPBATCH_ENGINE_REPLICAS_MAX": "1"})


def test_warm_up_tasks_wait_for_each_other_so_each_holds_a_worker_of_its_own():
    async def scenario():
        together = Barrier(parties=3)
        await asyncio.wait_for(asyncio.gather(*(together.wait(timeout=30) for _ in range(3))), timeout=5)
        short = Barrier(parties=2)  # a worker Ray cannot start delays the warm-up by the timeout, no more
        await asyncio.wait_for(short.wait(timeout=0.05), timeout=5)
        return together.peak(), short.peak(), together.waiting

    assert asyncio.run(scenario()) == (3, 1, 0)


def test_a_request_past_its_timeout_is_a_503_line_and_leaves_the_counts_straight():
    from runner.engine.server import EngineServer, EngineSpec

    server = EngineServer(EngineSpec(model="m", served_name="m", task="generate", cli_args=(), request_timeout_s=0.05))

    async def serve(url: str, body: str):
        await asyncio.sleep(0 if body == "fast" else 5)
        return "answered"

    server._serve = serve

    async def scenario():
        return await asyncio.gather(server._one("/v1/chat/completions", "slow"), server._one("/v1/chat/completions", "fast"))

    slow, fast = asyncio.run(scenario())
    assert fast == "answered"
    assert slow.status == 503 and slow.body["error"]["code"] == "engine_timeout"
    assert (server.inflight, server.finished) == (0, 2)


def test_each_engine_keeps_its_sockets_in_a_directory_the_next_engine_or_the_runner_removes(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    gone = subprocess.Popen(["true"])  # an engine process that was killed: its pid is free
    gone.wait()
    orphan = tmp_path / f"dropbatch-vllm-s0-0a1b2c3d-{gone.pid}-k1ll3d00"
    orphan.mkdir()
    (orphan / "8d1c0f9e-2b7a-4d0e-9f3c-6a1b2c3d4e5f").touch()
    someone_else = tmp_path / "dropbatch-vllm-notes"  # not a name we make: never touched
    someone_else.mkdir()
    long_name = "dropbatch-engine/" + "org/" * 20 + "model/generate/0"

    first = Path(socket_dir("s1", long_name))  # ours runs in this process, so it stays
    assert not orphan.exists() and someone_else.is_dir()
    assert len(f"/tmp/{first.name}/8d1c0f9e-2b7a-4d0e-9f3c-6a1b2c3d4e5f") < 108  # a Unix socket's path limit
    other_session = Path(socket_dir("s2", long_name))
    sibling = Path(socket_dir("s1", "dropbatch-engine/m/generate/1"))
    assert first.is_dir() and other_session.is_dir() and sibling.is_dir()
    assert remove_socket_dirs("s1") == 2  # the runner on its way out: its session's, not another runner's
    assert sorted(tmp_path.iterdir()) == sorted([other_session, someone_else])


@pytest.mark.parametrize("url, body, param", [
    ("/v1/completions", {"model": "m", "prompt": ""}, "prompt"),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": []}, "tools"),
])
def test_a_body_vllms_request_model_refuses_is_its_own_400_line_and_the_others_are_answered(url, body, param):
    """vLLM's request models raise VLLMValidationError (not pydantic's) from their validators: one such line
    failed the whole ``answer`` call, so every line sent with it was retried as an engine restart."""
    from starlette.responses import JSONResponse
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    from runner.engine.server import EngineServer, EngineSpec
    from runner.schedule import EngineGate

    server = EngineServer(EngineSpec(model="m", served_name="m", task="generate", cli_args=()))
    server._engine, server._gate = object(), EngineGate(4)  # started: no vLLM engine behind the handlers

    async def answered(request, raw_request):
        return JSONResponse({"object": "answered", "usage": {"prompt_tokens": 1, "completion_tokens": 2}})

    server._handlers = {url: answered}
    server._request_types = {"/v1/chat/completions": ChatCompletionRequest.model_validate_json,
                             "/v1/completions": CompletionRequest.model_validate_json}
    good = {"model": "m", "prompt": "hi"} if url == "/v1/completions" else {**body, "tools": None}
    rows = asyncio.run(server.answer([(url, json.dumps(good)), (url, json.dumps(body))]))

    assert rows[0]["status"] == 200 and json.loads(rows[0]["body_json"])["object"] == "answered"
    refused = json.loads(rows[1]["body_json"])["error"]
    assert rows[1]["status"] == 400 and refused["param"] == param, refused
    assert (server.inflight, server.finished) == (0, 2)


def test_a_request_that_fails_inside_the_actor_is_its_own_5xx_line_unless_the_engine_is_dead():
    """Any exception out of one request (here vLLM answering with a body that is not JSON) is that line's
    500, retried and then its error line; only a dead engine fails the call, for its supervisor to restart."""
    from starlette.responses import Response
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.v1.engine.exceptions import EngineDeadError

    from runner.engine.server import EngineServer, EngineSpec
    from runner.schedule import EngineGate

    server = EngineServer(EngineSpec(model="m", served_name="m", task="generate", cli_args=()))
    server._engine, server._gate = object(), EngineGate(4)

    async def answered(request, raw_request):
        if request.prompt == "broken":
            return Response(b"not json", status_code=200)
        if request.prompt == "dead":
            raise EngineDeadError()
        return Response(b'{"object": "text_completion", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}')

    server._handlers = {"/v1/completions": answered}
    server._request_types = {"/v1/completions": CompletionRequest.model_validate_json}
    ask = [("/v1/completions", json.dumps({"model": "m", "prompt": p})) for p in ("ok", "broken")]
    rows = asyncio.run(server.answer(ask))
    assert [r["status"] for r in rows] == [200, 500]
    error = json.loads(rows[1]["body_json"])["error"]
    assert error["code"] == "engine_error" and error["type"] == "server_error" and "JSONDecodeError" in error["message"]
    with pytest.raises(EngineDeadError):
        asyncio.run(server.answer([*ask, ("/v1/completions", json.dumps({"model": "m", "prompt": "dead"}))]))
    assert (server.inflight, server.finished) == (0, 5)
