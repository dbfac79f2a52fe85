"""Fields valid in OpenAI's API that this deployment does not honour yet: the one list to shrink.

Request bodies are answered by vLLM's own OpenAI serving code in the warm engine
(``runner/engine/server.py``), so whatever vLLM's server honours works in a batch
(``n``, ``logprobs``/``top_logprobs``, ``echo``, ``logit_bias``, ``response_format``,
``encoding_format``, ``dimensions``, several prompts, token ids …) and what it refuses
comes back as vLLM's own 400 line. What is left here is what vLLM would accept and then
ignore, or what the served models cannot do yet; admission refuses it with
``unsupported_parameter`` naming the field, unless its value is what happens anyway.
Tools wait for chat templates that render them and a tool-call parser (issue 11).
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
    "suffix": ("",),  # fill-in-the-middle: the served models have no FIM rendering
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "parallel_tool_calls": (True,),
    "messages[].tool_calls": ([],),
    "messages[].tool_call_id": (),
    "messages[].function_call": (),
    "messages[].audio": (),
    **{name: () for name in REFUSED_UNTYPED},
    "modalities": (["text"],),
    "service_tier": ("auto", "default"),
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
