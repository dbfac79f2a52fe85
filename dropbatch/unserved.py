"""Fields valid in OpenAI's API that the engine does not honour yet: the one list to shrink.

``dropbatch/engine/requests.py`` maps a request body onto the engine by hand
(messages' role and text, prompt, embedding strings, max_tokens, stop,
temperature, top_p, penalties, seed and vLLM's top_k, min_p, min_tokens,
ignore_eos, repetition_penalty). Anything else a body asks for would be dropped,
so admission refuses it with ``unsupported_parameter`` naming the field, unless
its value is what the engine does anyway. When the engine learns a field, delete
its entry here.
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
    "n": (1,),
    "best_of": (1,),
    "logprobs": (False,),
    "top_logprobs": (),
    "echo": (False,),
    "suffix": ("",),
    "logit_bias": ({},),
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "parallel_tool_calls": (True,),
    "encoding_format": ("float",),
    "dimensions": (),
    "messages[].name": (),
    "messages[].tool_calls": ([],),
    "messages[].tool_call_id": (),
    "messages[].function_call": (),
    "messages[].audio": (),
    "prompt[]": (),  # several prompts, or token ids
    "input[]": (),  # token ids
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
