"""Parity: the same request lines through dropbatch and through vLLM's own front ends give the same bodies.

Both answer with vLLM's own OpenAI serving code on the same model directory with the
same engine flags (``runner.engine.flags.vllm_args`` with the warm engine's planned limits),
so a body may differ only in ids and timestamps. run-batch serves chat and embeddings;
/v1/completions and /v1/responses, which it lacks, go to vLLM's own server
(``vllm.entrypoints.openai.api_server``, one engine start) line by line over HTTP.
Structured outputs are also checked on their own: every ``json_schema`` answer that
finished (``finish_reason: stop``) parses and validates against its schema.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import jsonschema
import pytest
from conftest import MODEL_DIR
from soak import submit
from test_tools import TIME, WEATHER, finishing_bias
from test_warm_engine import outputs

from dropbatch.models import BatchStatus
from runner.engine.flags import vllm_args, worker_env

pytestmark = pytest.mark.e2e

MODEL = "dropbatch-tiny"
CHAT, EMBEDDINGS = "/v1/chat/completions", "/v1/embeddings"
COMPLETIONS, RESPONSES = "/v1/completions", "/v1/responses"
IGNORED = {"id", "created"}  # per-run values: dropbatch derives them from the content address
# Responses objects carry ids and times on the response and on every output item.
RESPONSE_IGNORED = {"id", "created_at", "completed_at", "call_id"}
SERVER_START_SECONDS = 600

ENUM = {"type": "object", "properties": {"label": {"type": "string", "enum": ["spam", "ham", "eggs"]}},
        "required": ["label"], "additionalProperties": False}
TWO = {"type": "object", "properties": {"ok": {"type": "boolean"}, "size": {"enum": ["s", "m", "l"]}},
       "required": ["ok", "size"], "additionalProperties": False}

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Summarise the quarterly report."}],
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Is this spam?"}],
    "turns": [{"role": "system", "content": "Classify."}, {"role": "user", "content": "first"},
              {"role": "assistant", "content": "ham"}, {"role": "user", "content": "second one, please"}],
    "unicode": [{"role": "user", "content": "héllo wörld ✓ 日本語のテキスト 🚀 — «quotes» \u00a0nbsp"}],
    "parts": [{"role": "developer", "content": [{"type": "text", "text": "rules"}]},
              {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
    "long": [{"role": "user", "content": " ".join(f"word{i}" for i in range(70))}],  # ~250 of the 512 tokens
}
OPTIONS = {
    "greedy": {"temperature": 0, "max_tokens": 16},
    "sampled": {"temperature": 1, "seed": 7, "max_tokens": 16},
    "nucleus": {"temperature": 0.8, "top_p": 0.5, "top_k": 20, "min_p": 0.05, "seed": 11, "max_tokens": 12},
    "stops": {"temperature": 0, "stop": ["e", "a much longer stop sequence that never shows up", "\n"],
              "max_tokens": 24},
    "penalties": {"temperature": 0, "presence_penalty": 1.5, "frequency_penalty": -0.5, "repetition_penalty": 1.3,
                  "max_completion_tokens": 16},
    "logprobs": {"temperature": 0, "logprobs": True, "top_logprobs": 3, "max_tokens": 6},
    "bias": {"temperature": 0, "logit_bias": {"17": 50, "18": -100}, "max_tokens": 8},
    "n2": {"n": 2, "temperature": 1, "seed": 3, "max_tokens": 8},
    "json_object": {"temperature": 0, "response_format": {"type": "json_object"}, "max_tokens": 24},
    "enum_strict": {"temperature": 1, "seed": 5, "max_tokens": 24, "response_format": {
        "type": "json_schema", "json_schema": {"name": "label", "schema": ENUM, "strict": True}}},
}
EXTRA = {
    "two_fields": {"temperature": 1, "seed": 9, "max_tokens": 32, "response_format": {
        "type": "json_schema", "json_schema": {"name": "two", "schema": TWO, "strict": False}}},
    "min_tokens": {"temperature": 0, "min_tokens": 4, "max_tokens": 8, "ignore_eos": True},
    "greedy_n2": {"n": 2, "temperature": 0, "max_tokens": 4},  # vLLM's own 400 on both sides
    "too_long": {"messages": [{"role": "user", "content": " ".join(f"word{i}" for i in range(150))}],
                 "max_tokens": 4},  # past the 512-token context: vLLM's 400 on both sides
    "schema_logprobs": {"temperature": 0, "logprobs": True, "top_logprobs": 2, "max_tokens": 16, "response_format": {
        "type": "json_schema", "json_schema": {"name": "label", "schema": ENUM, "strict": True}}},
    "tools_required": {"tools": [WEATHER, TIME], "tool_choice": "required", "max_tokens": 128, "temperature": 0},
    "tools_named": {"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}},
                    "max_tokens": 128, "temperature": 0},
    "tools_auto": {"tools": [WEATHER], "tool_choice": "auto", "max_tokens": 12, "temperature": 0},
}


def chat_corpus() -> list[dict]:
    bias = finishing_bias(MODEL_DIR)
    lines = []
    for (talk, messages), (name, options) in itertools.product(CONVERSATIONS.items(), OPTIONS.items()):
        lines.append({"custom_id": f"{talk}-{name}", "body": {"messages": messages, **options}})
    for name, options in EXTRA.items():
        if name.startswith("tools_") and name != "tools_auto":
            options = {**options, "logit_bias": bias}
        # the system conversation, unless the options bring their own messages (too_long)
        lines.append({"custom_id": name, "body": {"messages": CONVERSATIONS["system"], **options}})
    return [{"custom_id": line["custom_id"], "method": "POST", "url": CHAT, "body": {"model": MODEL, **line["body"]}}
            for line in lines]


def embeddings_corpus() -> list[dict]:
    inputs = {"one": {"input": "hello"}, "many": {"input": ["a", "bb", "ccc ✓"]},
              "base64": {"input": ["hello", "world"], "encoding_format": "base64"},
              "tokens": {"input": [[1, 2, 3], [4, 5]]}, "float": {"input": "日本語", "encoding_format": "float"},
              "user": {"input": "x", "user": "u-1"}}
    return [{"custom_id": f"e-{name}", "method": "POST", "url": EMBEDDINGS, "body": {"model": MODEL, **body}}
            for name, body in inputs.items()]


def completions_corpus() -> list[dict]:
    prompts = {"text": "The quarterly report says", "unicode": "héllo wörld ✓ 日本語 🚀",
               "several": ["first prompt", "a second, longer prompt"], "tokens": [17, 18, 19, 20]}
    options = {"greedy": {"temperature": 0, "max_tokens": 12},
               "sampled": {"temperature": 1, "seed": 7, "max_tokens": 12},
               "stops": {"temperature": 0, "stop": ["e", "a long stop sequence that never shows up"], "max_tokens": 16},
               "logprobs": {"temperature": 0, "logprobs": 3, "echo": True, "max_tokens": 6},
               "n2": {"n": 2, "temperature": 1, "seed": 3, "max_tokens": 8},
               "penalties": {"temperature": 0, "presence_penalty": 1.0, "frequency_penalty": 0.5,
                             "logit_bias": {"17": 20}, "max_tokens": 8}}
    lines = [{"custom_id": f"c-{p}-{o}", "body": {"prompt": prompt, **option}}
             for (p, prompt), (o, option) in itertools.product(prompts.items(), options.items())]
    lines.append({"custom_id": "c-too-long", "body": {"prompt": " ".join(f"w{i}" for i in range(600)),
                                                      "max_tokens": 4}})  # past the context: vLLM's 400
    return [{"custom_id": line["custom_id"], "method": "POST", "url": COMPLETIONS,
             "body": {"model": MODEL, **line["body"]}} for line in lines]


def responses_corpus() -> list[dict]:
    schema = {"type": "json_schema", "name": "label", "schema": ENUM, "strict": True}
    bodies = {"plain": {"input": "Classify: win a prize now"},
              "messages": {"input": [{"role": "user", "content": [{"type": "input_text", "text": "héllo ✓"}]}],
                           "instructions": "Answer briefly."},
              "schema": {"input": "spam or ham?", "text": {"format": schema}},
              "nucleus": {"input": "Go on", "top_p": 0.5, "metadata": {"k": "v"}},
              # no include: the logprobs' floats differ in their last digits with the batch they ran in (the peer
              # answers one request at a time), and a near tie then flips a token; test_responses.py checks them
              "logprobs": {"input": "Go on", "top_logprobs": 2}}
    return [{"custom_id": f"r-{name}", "method": "POST", "url": RESPONSES,
             "body": {"model": MODEL, "temperature": 0, "max_output_tokens": 16, **body}}
            for name, body in bodies.items()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def peer_env(stack):
    """The environment vLLM's own front ends run in: the warm engine's, and a socket directory removed after
    (vLLM leaves its ZMQ socket files in the temp directory)."""
    sockets = tempfile.mkdtemp(prefix="dropbatch-parity-")
    try:
        yield {**os.environ, **worker_env(stack.settings.engine, "parity"), "VLLM_RPC_BASE_PATH": sockets}
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


@contextmanager
def vllm_server(stack, tmp_path, env):
    """vLLM's own OpenAI server on the same model and flags; yields its base URL."""
    engine = stack.settings.engine
    port = free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL_DIR),
            "--served-model-name", MODEL, "--runner", "generate", "--host", "127.0.0.1", "--port", str(port),
            *vllm_args(engine, stack.engine.engine._limits[MODEL])]
    log = (tmp_path / "vllm-server.log").open("w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            assert proc.poll() is None, (tmp_path / "vllm-server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "vLLM's server did not start"
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def served_by(url: str, lines: list[dict]) -> dict[str, dict]:
    """Each line posted to vLLM's server, shaped as a batch output line (the status and body it answered)."""
    answers = {}
    for line in lines:
        request = urllib.request.Request(url + line["url"], data=json.dumps(line["body"]).encode(),
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                status, body = response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            status, body = exc.code, json.loads(exc.read())
        answers[line["custom_id"]] = {"response": {"status_code": status, "body": body}}
    return answers


def without(value, keys: set[str]):
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


def run_batch(stack, lines: list[dict], tmp_path, env, *, task: str) -> dict[str, dict]:
    """vLLM's own batch runner on the same model with the warm engine's flags."""
    engine = stack.settings.engine
    source, target = tmp_path / f"{task}-in.jsonl", tmp_path / f"{task}-out.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    runner = ["--runner", "pooling", "--convert", "embed"] if task == "embed" else ["--runner", "generate"]
    limits = stack.engine.engine._limits[MODEL]
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(source), "-o", str(target),
            "--model", str(MODEL_DIR), "--served-model-name", MODEL, *runner, *vllm_args(engine, limits)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {line["custom_id"]: line for line in map(json.loads, target.read_text().splitlines())}


def normal(answer: dict, *, peer: bool) -> tuple[int, object]:
    """(status, what must be equal): the body without per-run values, or the error's message."""
    response = answer["response"]
    status = int(response["status_code"])
    if status != 200:
        error = answer["error"] if peer and answer.get("error") else response["body"]
        return status, error["error"]["message"]
    if response["body"].get("object") == "response":
        return status, without(response["body"], RESPONSE_IGNORED)
    body = {k: v for k, v in json.loads(json.dumps(response["body"])).items() if k not in IGNORED}
    for choice in body.get("choices") or ():  # tool call ids: vLLM draws them, dropbatch derives them
        for call in (choice.get("message") or {}).get("tool_calls") or ():
            call["id"] = "call"
    return status, body


def check_structured(lines: list[dict], got: dict[str, dict]) -> int:
    """Every json_schema answer that stopped parses and validates; returns how many stopped."""
    stopped = 0
    for line in lines:
        response_format = line["body"].get("response_format") or {}
        if response_format.get("type") != "json_schema":
            continue
        schema = response_format["json_schema"]["schema"]
        response = got[line["custom_id"]]["response"]
        assert response["status_code"] == 200, (line["custom_id"], response)
        for choice in response["body"]["choices"]:
            assert choice["message"]["content"] is not None
            assert choice["message"]["content"].lstrip()[:1] == "{", choice  # constrained from the first token
            if choice["finish_reason"] == "stop":
                stopped += 1
                jsonschema.validate(json.loads(choice["message"]["content"]), schema)
    return stopped


def test_dropbatch_and_vllms_front_ends_give_the_same_bodies(stack, tmp_path, peer_env):
    chat, embed = chat_corpus(), embeddings_corpus()
    complete, respond = completions_corpus(), responses_corpus()
    assert len(chat) + len(embed) + len(complete) + len(respond) >= 50
    stack.ctx.tenants.create("e2e-parity", "enterprise")
    refs = {"chat": submit(stack.ctx, "e2e-parity", "chat", chat),
            "embed": submit(stack.ctx, "e2e-parity", "embed", embed, endpoint=EMBEDDINGS),
            "complete": submit(stack.ctx, "e2e-parity", "complete", complete, endpoint=COMPLETIONS),
            "respond": submit(stack.ctx, "e2e-parity", "respond", respond, endpoint=RESPONSES)}
    stack.drain()
    ours = {}
    for ref in refs.values():
        record = stack.ctx.batches.for_job(ref)
        assert record.status == BatchStatus.COMPLETED, record.errors
        ours.update(outputs(stack, record))
    peer = {**run_batch(stack, chat, tmp_path, peer_env, task="generate"),
            **run_batch(stack, embed, tmp_path, peer_env, task="embed")}
    with vllm_server(stack, tmp_path, peer_env) as url:
        peer.update(served_by(url, complete + respond))
    assert set(ours) == set(peer) == {line["custom_id"] for line in chat + embed + complete + respond}
    differing = {cid: (normal(ours[cid], peer=False), normal(peer[cid], peer=True))
                 for cid in ours if normal(ours[cid], peer=False) != normal(peer[cid], peer=True)}
    assert not differing, f"{sorted(differing)}: " + json.dumps(differing, indent=1, ensure_ascii=False)[:6000]
    # What the corpus exercises came back as asked (not just equally).
    assert normal(ours["greedy_n2"], peer=False)[0] == 400 and normal(ours["too_long"], peer=False)[0] == 400
    assert all(normal(ours[f"long-{name}"], peer=False)[0] == 200 for name in OPTIONS)
    assert len(ours["user-n2"]["response"]["body"]["choices"]) == 2
    assert ours["user-logprobs"]["response"]["body"]["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    assert ours["tools_required"]["response"]["body"]["choices"][0]["message"]["tool_calls"]
    assert ours["e-base64"]["response"]["body"]["data"][0]["embedding"].__class__ is str
    assert check_structured(chat, ours) >= 5
    assert normal(ours["c-too-long"], peer=False)[0] == 400
    assert len(ours["c-several-n2"]["response"]["body"]["choices"]) == 4  # two prompts, two choices each
    assert ours["c-text-logprobs"]["response"]["body"]["choices"][0]["logprobs"]["top_logprobs"]
    assert {ours[f"r-{name}"]["response"]["body"]["object"] for name in ("plain", "schema")} == {"response"}
