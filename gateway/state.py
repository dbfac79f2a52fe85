"""What every route shares, built once per app: settings, the kernel Context, auth, limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from dropbatch.auth.tokens import Tokens
from dropbatch.context import Context
from dropbatch.observability.metrics import Metrics
from dropbatch.settings import Settings
from gateway.auth import TokenAuth
from gateway.ratelimit import RateLimiter


@dataclass
class Gateway:
    settings: Settings
    ctx: Context
    tokens: Tokens
    auth: TokenAuth
    limiter: RateLimiter
    metrics: Metrics
    caches: dict[str, Any] = field(default_factory=dict)  # lazily built helpers (the tokenizer)


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway
