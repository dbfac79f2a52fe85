"""Fields valid in OpenAI's API that this deployment does not honour yet: the one list to shrink.

Request bodies are answered by vLLM's own OpenAI serving code in the warm engine
(``runner/engine/server.py``), so whatever vLLM's server honours works in a batch
(``n``, ``logprobs``/``top_logprobs``, ``echo``, ``logit_bias``, ``response_format``,
``encoding_format``, ``dimensions``, several prompts, token ids, ``tools`` with
``tool_choice`` and tool messages …) and what it refuses comes back as vLLM's own 400
line. What is left here is what vLLM would accept and then ignore, or what the served
models cannot do yet; admission refuses it with ``unsupported_parameter`` naming the
field, unless its value is what happens anyway. Tools are refused the same way only
where the deployment turns tool calling off (``DROPBATCH_TOOL_CALL_PARSER=none``):
see ``refuse_tools``.
"""

from __future__ import annotations

from typing import Any

from dropbatch.fields import fail

# Chat fields of OpenAI's that any value of is refused, so their types are not checked first.
REFUSED_UNTYPED = ("audio", "functions", "function_call", "prediction", "reasoning_effort", "verbosity", "web_search_options")

# Valid per OpenAI, not yet honoured by the engine: field → the values that change nothing
# (what the engine does anyway). Any other non-null value is refused with unsupported_parameter.
# Paths with [] are checked inside messages (dropbatch.messages) and prompts.
NOT_YET_SERVED: dict[str, tuple[Any, ...]] = {
    "best_of": (1,),  # vLLM's V1 engine has no best_of: it would be ignored
    "suffix": (),  # fill-in-the-middle: the served models have none (vLLM refuses even "" for them)
    "messages[].function_call": (),
    "messages[].audio": (),
    **{name: () for name in REFUSED_UNTYPED},
    "modalities": (["text"],),
    "service_tier": ("auto", "default"),
    "prompt_cache_retention": ("in_memory",),  # '24h' extended retention: the prefix cache keeps what fits in memory
    "store": (False,),  # chat completions stored for distillation and evals: a batch keeps none to list or retrieve
    "stream_options": (),
}


def served(key: str, value: Any, param: str, what: str = "") -> None:
    """Refuse ``value`` at ``param`` if the engine would drop it (see ``NOT_YET_SERVED``)."""
    neutral = NOT_YET_SERVED.get(key)
    # Compared with their types: 0 is not False (completions' logprobs=0 still asks for logprobs).
    if neutral is not None and value is not None and not any(type(v) is type(value) and v == value for v in neutral):
        fail(
            param,
            f"{what}is valid in OpenAI's API but not yet served by this deployment; remove it.",
            "unsupported_parameter",
        )


# Without a tool-call parser the engine cannot turn output into tool calls: these are refused then.
TOOL_FIELDS: dict[str, tuple[Any, ...]] = {"tools": ([],), "tool_choice": ("none",), "parallel_tool_calls": (True,)}


def refuse_tools(body: Any) -> None:
    """Refuse what asks for tool calls when tool calling is off in this deployment."""
    why = "needs tool calling, which this deployment has turned off (DROPBATCH_TOOL_CALL_PARSER); remove it."
    for name, neutral in TOOL_FIELDS.items():
        value = body.get(name)
        if value is not None and not any(type(v) is type(value) and v == value for v in neutral):
            fail(f"body.{name}", why, "unsupported_parameter")
    for index, message in enumerate(body.get("messages") or ()):
        for name in ("tool_calls", "tool_call_id"):
            if isinstance(message, dict) and message.get(name):
                fail(f"body.messages[{index}].{name}", why, "unsupported_parameter")
