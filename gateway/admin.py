"""/admin/tokens: issue, list and revoke tenant tokens with the admin token.

Disabled (404) unless DROPBATCH_ADMIN_TOKEN is set. A missing or wrong bearer
is 401; a valid tenant token is 403 (it authenticates, but is not an admin).
Each wrong attempt spends one of the client address's failed attempts; past
the burst the answer is 429 (``gateway.ratelimit.AttemptLimiter``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import check_admin
from gateway.files import list_envelope
from gateway.params import json_object, path_id, query_str, validate
from gateway.schemas import TokenCreate
from gateway.state import gateway_of


async def _admin(request: Request) -> None:
    gw = gateway_of(request)
    await check_admin(request, gw.settings.service.admin_token, gw.auth)


async def create_token(request: Request) -> Response:
    await _admin(request)
    gw = gateway_of(request)
    body = validate(TokenCreate, await json_object(request))
    issued = await gw.tokens.create(body.tenant, tier=body.tier, expires_in=body.expires_in)
    gw.auth.forget_unknown(issued.token)  # tried a moment ago as unknown? it works at once here
    return JSONResponse({**issued.record.public(), **issued.shown_once()}, status_code=201)


async def list_tokens(request: Request) -> Response:
    await _admin(request)
    gw = gateway_of(request)
    tenant = query_str(request, "tenant", max_length=128)
    records = [record.public() for record in await gw.tokens.list(tenant)]
    return JSONResponse(list_envelope(records, False))


async def revoke_token(request: Request) -> Response:
    await _admin(request)
    gw = gateway_of(request)
    record = await gw.tokens.revoke(path_id(request, "token_id"))
    return JSONResponse(record.public())


ROUTES = [
    Route("/admin/tokens", create_token, methods=["POST"]),
    Route("/admin/tokens", list_tokens, methods=["GET"]),
    Route("/admin/tokens/{token_id}", revoke_token, methods=["DELETE"]),
]
