"""The warm engine: one long-lived Ray actor per model, task and replica, owning vLLM.

The actor builds, once, exactly what ``vllm run-batch`` and vLLM's OpenAI server
build (``build_async_engine_client`` → ``init_app_state``), and answers every
request body with vLLM's own OpenAI serving code: ``create_chat_completion``,
``create_completion``, ``create_responses``, the embedding server. So every field vLLM's server honours
(``response_format``, ``tools``, ``logprobs``, ``n``, ``seed`` …) works in a
batch, and a body vLLM rejects comes back as vLLM's own 4xx error, never as a
silently dropped field. Bodies arrive as JSON text and are validated by vLLM's
pydantic request models, so no value reaches the engine core with a wrong type
(NOTES-warm-engine.md, "Types through Ray Data blocks").

Nothing here imports vLLM at module level: the runner's driver only needs the
class to create the actor; the import happens inside the actor's process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from dropbatch.errors import openai_error
from dropbatch.models import token_counts
from runner.engine.reap import SESSION_VAR, socket_dir
from runner.schedule import EngineGate, engine_gate_limit

log = logging.getLogger("dropbatch.engine")

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
GENERATE = "generate"
EMBED = "embed"
TASK_OF_URL = {CHAT: GENERATE, COMPLETIONS: GENERATE, RESPONSES: GENERATE, EMBEDDINGS: EMBED}


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine actor needs to start: plain data, so it ships to any node."""

    model: str
    served_name: str
    task: str
    cli_args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    request_timeout_s: float = 600.0

    def argv(self) -> list[str]:
        """vLLM's own command line for this engine (run-batch's parser; -i/-o are unused placeholders)."""
        runner = ["--runner", "pooling", "--convert", "embed"] if self.task == EMBED else ["--runner", "generate"]
        return ["-i", "-", "-o", "-", "--model", self.model, "--served-model-name", self.served_name, *runner,
                *self.cli_args]


@dataclass
class Answer:
    """One request's outcome: an OpenAI response body (or error body) with its HTTP status."""

    status: int
    body: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_row(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "body_json": json.dumps(self.body, ensure_ascii=False),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


def probe_request(task: str, served_name: str) -> tuple[str, str]:
    """The smallest real request an engine of ``task`` answers: ``(url, body_json)``."""
    if task == EMBED:
        return EMBEDDINGS, json.dumps({"model": served_name, "input": "ping"})
    return COMPLETIONS, json.dumps({"model": served_name, "prompt": "ping", "max_tokens": 1})


def error_answer(status: int, message: str, *, code: str | None, param: str | None = None,
                 type_: str = "invalid_request_error") -> Answer:
    return Answer(status=status, body=openai_error(message, type_=type_, code=code, param=param))


class EngineServer:
    """Ray actor body (async): ``answer`` many request bodies concurrently on one warm vLLM.

    Created with ``max_restarts=-1``: if the actor dies Ray starts it again and the
    engine is rebuilt on the next call. ``stats`` reports in-flight work and the last
    moment a request finished, for the runner's stall watchdog.
    """

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._stack: AsyncExitStack | None = None
        self._starting: asyncio.Lock | None = None
        self._handlers: dict[str, Any] = {}
        self._request_types: dict[str, Any] = {}
        self._engine: Any = None
        self._gate: EngineGate | None = None
        self.inflight = 0
        self.finished = 0
        self.last_progress = time.monotonic()
        self.started_at: float | None = None

    async def start(self) -> float:
        """Load the engine (once); returns the seconds it took (0 if it was already up)."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._engine is not None:
                return 0.0
            began = time.monotonic()
            await self._build()
            self.started_at = time.monotonic()
            self.last_progress = self.started_at
            return self.started_at - began

    async def _build(self) -> None:
        import os

        os.environ.update(self.spec.env)
        sockets = socket_dir(self.spec.env.get(SESSION_VAR, "local"), _actor_name())
        os.environ["VLLM_RPC_BASE_PATH"] = sockets  # vLLM leaves its socket files behind: keep them in one place
        from starlette.datastructures import State
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
        from vllm.entrypoints.launchers.run_batch import make_arg_parser
        from vllm.usage.usage_lib import UsageContext
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        args = make_arg_parser(FlexibleArgumentParser()).parse_args(self.spec.argv())
        stack = AsyncExitStack()
        stack.callback(shutil.rmtree, sockets, ignore_errors=True)  # after vLLM has stopped
        try:
            engine = await stack.enter_async_context(
                build_async_engine_client(args, usage_context=UsageContext.OPENAI_BATCH_RUNNER)
            )
            state = State()
            await init_app_state(engine, state, args, await engine.get_supported_tasks())
            self._handlers, self._request_types = _serving(state)
        except BaseException:
            await stack.aclose()  # a half-built engine stops here, not with the actor
            raise
        self._gate = EngineGate(engine_gate_limit(args.max_num_seqs or 256))
        self._stack, self._engine = stack, engine

    async def answer(self, requests: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Answer ``(url, body_json)`` pairs concurrently; one row per request, in order."""
        await self.start()
        return [a.as_row() for a in await asyncio.gather(*(self._one(url, body) for url, body in requests))]

    async def _one(self, url: str, body: str) -> Answer:
        if self.inflight == 0:
            self.last_progress = time.monotonic()  # idle time before work arrived is not a stall
        self.inflight += 1
        try:
            async with asyncio.timeout(self.spec.request_timeout_s):  # no task of its own, unlike wait_for
                return await self._serve(url, body)
        except TimeoutError:
            return error_answer(503, f"The engine did not answer within {self.spec.request_timeout_s:.0f} s.",
                                code="engine_timeout", type_="server_error")
        except Exception as exc:
            if self._errored(exc):
                raise  # a dead engine: the call fails, and its supervisor restarts it and retries the lines
            # Anything else is this line's failure (a 5xx: retried, then its error line), never the call's:
            # an exception out of ``answer`` fails every line sent with it and reads as an engine restart.
            log.exception("request failed in the engine actor", extra={"url": url})
            return error_answer(500, f"The engine failed on this request ({type(exc).__name__}: {exc}).",
                                code="engine_error", type_="server_error")
        finally:
            self.inflight -= 1
            self.finished += 1
            self.last_progress = time.monotonic()

    async def _serve(self, url: str, body: str) -> Answer:
        import pydantic
        from vllm.entrypoints.serve import create_error_response

        handler = self._handlers.get(url)
        if handler is None:
            return error_answer(400, f"This model does not serve {url}.", code="unsupported_endpoint", param="url")
        try:
            request = self._request_types[url](body)
        except pydantic.ValidationError as exc:
            return _validation_answer(exc)
        except Exception as exc:  # vLLM's request models raise VLLMValidationError (tools: [], prompt: "" …)
            # as vLLM's server answers it: this line's 400, never an exception that fails every line sent with it
            return _to_answer(create_error_response(exc))
        try:
            async with self._gate.admitted(getattr(request, "priority", 0) or 0):
                response = await handler(request, None)
        except Exception as exc:  # vLLM's server turns any handler exception into an error response too
            if self._errored(exc):
                raise  # a dead engine is the supervisor's business, not this line's
            response = create_error_response(exc)
        return _to_answer(response, by_alias=url == RESPONSES)

    async def probe(self) -> bool:
        """A tiny real request through the whole path: True once the engine answers."""
        await self.start()
        answer = await self._one(*probe_request(self.spec.task, self.spec.served_name))
        return answer.status == 200

    def _errored(self, exc: BaseException | None = None) -> bool:
        """Whether vLLM's engine is dead (it says so, or ``exc`` is its EngineDeadError)."""
        if exc is not None:
            from vllm.v1.engine.exceptions import EngineDeadError

            if isinstance(exc, EngineDeadError):
                return True
        return bool(self._engine is not None and getattr(self._engine, "errored", False))

    def stats(self) -> dict[str, Any]:
        return {
            "inflight": self.inflight,
            "finished": self.finished,
            "idle_seconds": time.monotonic() - self.last_progress,
            "ready": self._engine is not None,
            "started_at": self.started_at,
            "errored": self._errored(),
        }

    async def shutdown(self) -> None:
        """Stop vLLM cleanly (its EngineCore process exits with it)."""
        if self._stack is not None:
            stack, self._stack, self._engine = self._stack, None, None
            await stack.aclose()


def _actor_name() -> str:
    """This engine's Ray actor name (its socket directory's tag); "local" outside a Ray actor."""
    import ray

    return (ray.is_initialized() and ray.get_runtime_context().get_actor_name()) or "local"


def _serving(state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Handlers and request parsers by URL, from the serving objects vLLM's server builds."""
    from pydantic import TypeAdapter
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
    from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest

    handlers: dict[str, Any] = {}
    parsers: dict[str, Any] = {}
    chat = getattr(state, "openai_serving_chat", None)
    if chat is not None:
        handlers[CHAT] = chat.create_chat_completion
        parsers[CHAT] = ChatCompletionRequest.model_validate_json
    completion = getattr(state, "openai_serving_completion", None)
    if completion is not None:
        handlers[COMPLETIONS] = completion.create_completion
        parsers[COMPLETIONS] = CompletionRequest.model_validate_json
    responses = getattr(state, "openai_serving_responses", None)
    if responses is not None:
        handlers[RESPONSES] = responses.create_responses
        parsers[RESPONSES] = ResponsesRequest.model_validate_json
    embedding = getattr(state, "serving_embedding", None)
    if embedding is not None:
        handlers[EMBEDDINGS] = embedding
        parsers[EMBEDDINGS] = TypeAdapter(EmbeddingRequest).validate_json
    return handlers, parsers


def _validation_answer(exc: Any) -> Answer:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = first.get("msg", str(exc))
    return error_answer(400, f"{where}: {message}" if where else message, code="invalid_request",
                        param=f"body.{where}" if where else None)


def _to_answer(response: Any, *, by_alias: bool = False) -> Answer:
    """vLLM's response object (pydantic model, JSONResponse or ErrorResponse) → Answer.

    ``by_alias`` as vLLM's own server dumps it: Responses bodies by alias (``text.format.schema``).
    """
    from starlette.responses import Response
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    if isinstance(response, Response):
        payload = json.loads(bytes(response.body))
        if response.status_code >= 400 or "error" in payload:
            err = payload.get("error", payload)
            return error_answer(response.status_code, str(err.get("message")), code=_code(err),
                                param=err.get("param"), type_=str(err.get("type") or "invalid_request_error"))
        return _ok(payload)
    if isinstance(response, ErrorResponse):
        err = response.error
        status = int(err.code) if isinstance(err.code, int) else 400
        return error_answer(status, err.message, code=_code(err.model_dump()), param=err.param,
                            type_=err.type or "invalid_request_error")
    if hasattr(response, "model_dump"):
        return _ok(response.model_dump(mode="json", exclude_none=False, by_alias=by_alias))
    return error_answer(400, "Streaming responses are not supported in batches.", code="invalid_request",
                        param="body.stream")


def _ok(payload: dict[str, Any]) -> Answer:
    prompt_tokens, completion_tokens = token_counts(payload.get("usage"))
    return Answer(status=200, body=payload, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def _code(err: dict[str, Any]) -> str | None:
    message = str(err.get("message") or "").lower()
    if "maximum context length" in message or "longer than the maximum model length" in message:
        return "context_length_exceeded"
    code = err.get("code")
    return code if isinstance(code, str) else "invalid_request"
