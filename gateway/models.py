"""GET /v1/models and /v1/models/{model}: the served models, as the OpenAI SDK's ``client.models`` reads them.

Answered from the settings (``DROPBATCH_MODELS``), never by asking an engine.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dropbatch.served import check_model, model_object
from gateway.auth import Principal, tenant_route
from gateway.state import gateway_of


@tenant_route
async def list_models(request: Request, principal: Principal) -> Response:
    engine = gateway_of(request).settings.engine
    return JSONResponse({"object": "list", "data": [model_object(engine, name) for name in engine.served]})


@tenant_route
async def retrieve_model(request: Request, principal: Principal) -> Response:
    engine = gateway_of(request).settings.engine
    name = check_model(engine, request.path_params["model"])
    return JSONResponse(model_object(engine, name))


ROUTES = [
    Route("/v1/models", list_models, methods=["GET"]),
    # Served names may hold a slash (hub ids such as Qwen/Qwen2.5-0.5B-Instruct).
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
]
