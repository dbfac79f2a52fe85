"""From an OpenAI request body to what the engine runs, and back to an OpenAI response body.

Pure functions, no vLLM import: the runner's Ray stages call them, and unit tests
check them on known numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dropbatch.errors import UnservableRequest
from dropbatch.ids import completion_id
from dropbatch.settings import EngineSettings

GENERATE = "generate"
EMBED = "embed"
TASK_OF_ENDPOINT = {
    "/v1/chat/completions": GENERATE,
    "/v1/completions": GENERATE,
    "/v1/responses": GENERATE,
    "/v1/embeddings": EMBED,
}

# OpenAI sampling fields that map one-to-one onto vLLM's SamplingParams.
_PASSTHROUGH = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed")
# vLLM extensions a client may set in a batch body (as vLLM's own OpenAI server allows).
_EXTENSIONS = ("top_k", "min_p", "min_tokens", "ignore_eos", "repetition_penalty")


def message_text(content: Any) -> str:
    """A chat message's text; content parts other than text are not served."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise UnservableRequest("Only text content parts are supported.", param="messages")
            texts.append(part["text"])
        return "".join(texts)
    raise UnservableRequest("Message content must be a string or an array of text parts.", param="messages")


def chat_messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": message_text(m.get("content"))} for m in body["messages"]]


def completion_prompt(body: Mapping[str, Any]) -> str:
    prompt = body["prompt"]
    return prompt[0] if isinstance(prompt, list) else prompt


def embedding_inputs(body: Mapping[str, Any]) -> list[str]:
    value = body["input"]
    return [value] if isinstance(value, str) else list(value)


def max_tokens(body: Mapping[str, Any], engine: EngineSettings) -> int:
    return int(body.get("max_completion_tokens") or body.get("max_tokens") or engine.default_max_tokens)


def sampling_params(body: Mapping[str, Any], engine: EngineSettings) -> dict[str, Any]:
    """vLLM SamplingParams keyword arguments for a chat or completions body."""
    params: dict[str, Any] = {"max_tokens": max_tokens(body, engine), "n": 1, "detokenize": True}
    for name in _PASSTHROUGH + _EXTENSIONS:
        if body.get(name) is not None:
            params[name] = body[name]
    params.setdefault("temperature", 1.0)  # OpenAI's default, not vLLM's
    stop = body.get("stop")
    if stop is not None:
        params["stop"] = [stop] if isinstance(stop, str) else list(stop)
    return params


def finish_reason(generated_tokens: int, limit: int, generated_ids: list[int] | None = None, stop_ids: set[int] | None = None) -> str:
    """``length`` when the token budget ran out without a stop token, else ``stop``."""
    if generated_tokens >= limit and not (generated_ids and stop_ids and generated_ids[-1] in stop_ids):
        return "length"
    return "stop"


def chat_completion_body(
    *, content_sha256: str, custom_id: str, model: str, created: int, text: str,
    prompt_tokens: int, completion_tokens: int, finish: str,
) -> dict[str, Any]:
    return {
        "id": completion_id(content_sha256, custom_id, "chatcmpl"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": _usage(prompt_tokens, completion_tokens),
        "system_fingerprint": None,
    }


def text_completion_body(
    *, content_sha256: str, custom_id: str, model: str, created: int, text: str,
    prompt_tokens: int, completion_tokens: int, finish: str,
) -> dict[str, Any]:
    return {
        "id": completion_id(content_sha256, custom_id, "cmpl"),
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": _usage(prompt_tokens, completion_tokens),
        "system_fingerprint": None,
    }


def embedding_body(*, model: str, vectors: list[list[float]], prompt_tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def engine_fingerprint(engine: EngineSettings) -> dict[str, Any]:
    """The engine parameters that change outputs; part of every content address."""
    return {
        "model": engine.model,
        "model_name": engine.model_name,
        "dtype": engine.dtype,
        "max_model_len": engine.max_model_len,
        "kv_cache_dtype": engine.kv_cache_dtype,
        "default_max_tokens": engine.default_max_tokens,
        "structured_outputs_config": engine.structured_outputs_config,
        "tool_call_parser": engine.tool_call_parser,
    }
