"""GET /openapi.json: the gateway's routes as OpenAPI 3.1 (request schemas from ``gateway.schemas``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dropbatch import __version__
from dropbatch.models import Batch, FileObject
from gateway.files import FILES_PAGE, KNOWN_PURPOSES, MAX_FILES_PAGE
from gateway.schemas import (
    ID_PATTERN,
    BatchCreate,
    CostEstimateRequest,
    GenerateBatchRequest,
    InlineBatchCreate,
    StartJobRequest,
    TokenCreate,
    ValidateRequest,
)

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


NULLABLE_STR = {"type": ["string", "null"]}
ERROR = _obj(
    ["error"],
    error=_obj(
        ["message", "type", "param", "code"],
        message={"type": "string"},
        type={"type": "string"},
        param=NULLABLE_STR,
        code=NULLABLE_STR,
    ),
)
_ERROR_TEXT = {
    400: "The request could not be read, or was refused on its merits.",
    401: "Missing, unknown, expired or revoked API key.",
    403: "The key may not do this.",
    404: "No such object for this tenant (or the route is disabled).",
    409: "Not allowed in the object's current state.",
    413: "The upload is larger than the limit.",
    422: "A field is missing, of the wrong type or out of range.",
    429: "Rate limited; see retry-after.",
}


def _errors(*statuses: int) -> dict[str, Any]:
    responses = {}
    for status in statuses:
        response: dict[str, Any] = {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        if status == 429:
            response["headers"] = {"retry-after": {"schema": {"type": "integer", "minimum": 1, "maximum": 120}}}
        responses[str(status)] = response
    return responses


def _ok(schema: dict[str, Any], description: str = "OK", status: int = 200) -> dict[str, Any]:
    return {str(status): {"description": description, "content": {"application/json": {"schema": schema}}}}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": ID_PATTERN}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _list_of(item: str) -> dict[str, Any]:
    return _obj(
        ["object", "data", "first_id", "last_id", "has_more"],
        object={"const": "list"},
        data={"type": "array", "items": _ref(item)},
        first_id=NULLABLE_STR,
        last_id=NULLABLE_STR,
        has_more={"type": "boolean"},
    )


TENANT = (401, 429)  # every tenant route can answer these


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    body: dict | None = None,
    params: list | None = None,
    public: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    if public:
        op["security"] = []
    return op


def _paths() -> dict[str, Any]:
    batch_id = [_path_param("batch_id")]
    file_id = [_path_param("file_id")]
    multipart = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": _obj(
                    ["file", "purpose"],
                    file={"type": "string", "format": "binary"},
                    purpose={"type": "string", "enum": list(KNOWN_PURPOSES)},
                )
            }
        },
    }
    return {
        "/health": {
            "get": _op(
                "Healthy or not (no details: those are /admin/health's)",
                {
                    **_ok(_ref("HealthStatus")),
                    "503": {
                        "description": "Unhealthy",
                        "content": {"application/json": {"schema": _ref("HealthStatus")}},
                    },
                },
                public=True,
            )
        },
        "/ready": {
            "get": _op(
                "Readiness: 503 with each component's state (s3, inbox, outbox, control) while one is not usable",
                {
                    **_ok(_ref("Readiness")),
                    "503": {"description": "Not ready", "content": {"application/json": {"schema": _ref("Readiness")}}},
                },
                public=True,
            )
        },
        "/admin/health": {
            "get": _op(
                "Health with its details: S3 endpoint, bucket names and states (admin)",
                {
                    **_ok(_ref("Health")),
                    "503": {"description": "Unhealthy", "content": {"application/json": {"schema": _ref("Health")}}},
                    **_errors(401, 403, 404, 429),
                },
            )
        },
        "/openapi.json": {"get": _op("This document", _ok({"type": "object"}), public=True)},
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "Text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                public=True,
            )
        },
        "/v1/files": {
            "post": _op(
                "Upload a batch input file",
                {**_ok(_ref("FileObject")), **_errors(400, 413, 422, *TENANT)},
                body=multipart,
            ),
            "get": _op(
                "List files",
                {**_ok(_list_of("FileObject")), **_errors(404, 422, *TENANT)},
                params=[
                    _query("after", {"type": "string", "pattern": ID_PATTERN}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_FILES_PAGE, "default": FILES_PAGE}),
                    _query("order", {"type": "string", "enum": ["asc", "desc"]}),
                    _query("purpose", {"type": "string", "minLength": 1, "maxLength": 256}),
                ],
            ),
        },
        "/v1/models": {"get": _op("List the served models", {**_ok(_ref("ModelList")), **_errors(*TENANT)})},
        "/v1/models/{model}": {
            "get": _op(
                "Retrieve a served model",
                {**_ok(_ref("Model")), **_errors(404, *TENANT)},
                params=[{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            )
        },
        "/v1/files/{file_id}": {
            "get": _op("Retrieve a file", {**_ok(_ref("FileObject")), **_errors(404, *TENANT)}, params=file_id),
            "delete": _op("Delete a file", {**_ok(_ref("FileDeleted")), **_errors(404, *TENANT)}, params=file_id),
        },
        "/v1/files/{file_id}/content": {
            "get": _op(
                "File content (JSONL)",
                {
                    "200": {
                        "description": "The bytes",
                        "content": {"application/jsonl": {"schema": {"type": "string"}}},
                    },
                    **_errors(404, *TENANT),
                },
                params=file_id,
            )
        },
        "/v1/batches": {
            "post": _op(
                "Create a batch (from an uploaded file, or with inline prompts)",
                {**_ok(_ref("Batch")), **_errors(400, 404, 413, 422, *TENANT)},
                body=_json_body({"anyOf": [_ref("BatchCreate"), _ref("InlineBatchCreate")]}),
            ),
            "get": _op(
                "List batches, newest first",
                {**_ok(_list_of("Batch")), **_errors(404, 422, *TENANT)},
                params=[
                    _query("after", {"type": "string", "pattern": ID_PATTERN}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
                ],
            ),
        },
        "/v1/batches/{batch_id}": {
            "get": _op("Retrieve a batch", {**_ok(_ref("Batch")), **_errors(404, *TENANT)}, params=batch_id)
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": _op("Cancel a batch", {**_ok(_ref("Batch")), **_errors(400, 404, 409, *TENANT)}, params=batch_id)
        },
        "/v1/batches/{batch_id}/results": {
            "get": _op(
                "Results joined with prompts (compat)",
                {**_ok({"type": "object"}), **_errors(404, 409, *TENANT)},
                params=batch_id,
            )
        },
        "/v1/batches/validate": {
            "post": _op(
                "Validate a batch before submitting (compat)",
                {**_ok(_ref("ValidationReport")), **_errors(400, 413, 422, *TENANT)},
                body=_json_body(_ref("ValidateRequest")),
            )
        },
        "/v1/batches/cost-estimate": {
            "post": _op(
                "Estimate tokens and cost (compat)",
                {**_ok({"type": "object"}), **_errors(400, 404, 413, 422, *TENANT)},
                body=_json_body(_ref("CostEstimateRequest")),
            )
        },
        "/generate_batch": {
            "post": _op(
                "Submit and wait for a small batch (compat)",
                {
                    **_ok({"type": "object"}),
                    "202": {
                        "description": "Not finished within timeout",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_errors(400, 404, 413, 422, *TENANT),
                },
                body=_json_body(_ref("GenerateBatchRequest")),
            )
        },
        "/start": {
            "post": _op(
                "Start a job from an S3 URI (compat)",
                {**_ok({"type": "object"}), **_errors(400, 403, 404, 409, 413, 422, *TENANT)},
                body=_json_body(_ref("StartJobRequest")),
            )
        },
        "/jobs/{job_id}": {
            "get": _op(
                "A job started with /start (compat)",
                {**_ok({"type": "object"}), **_errors(404, *TENANT)},
                params=[_path_param("job_id")],
            )
        },
        "/admin/tokens": {
            "post": _op(
                "Issue a tenant token (admin)",
                {**_ok({"type": "object"}, status=201), **_errors(400, 401, 403, 404, 422, 429)},
                body=_json_body(_ref("TokenCreate")),
            ),
            "get": _op(
                "List tokens, never their secrets (admin)",
                {**_ok({"type": "object"}), **_errors(401, 403, 404, 422, 429)},
                params=[_query("tenant", {"type": "string", "minLength": 1, "maxLength": 128})],
            ),
        },
        "/admin/tokens/{token_id}": {
            "delete": _op(
                "Revoke a token (admin)",
                {**_ok({"type": "object"}), **_errors(401, 403, 404, 429)},
                params=[_path_param("token_id")],
            )
        },
    }


def _model_schemas(*models: type[BaseModel], mode: str = "validation") -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF, mode=mode)  # type: ignore[arg-type]
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def document() -> dict[str, Any]:
    schemas = {
        **_model_schemas(
            BatchCreate,
            InlineBatchCreate,
            ValidateRequest,
            CostEstimateRequest,
            GenerateBatchRequest,
            StartJobRequest,
            TokenCreate,
        ),
        **_model_schemas(Batch, FileObject, mode="serialization"),
        "Error": ERROR,
        "FileDeleted": _obj(
            ["id", "object", "deleted"], id={"type": "string"}, object={"const": "file"}, deleted={"type": "boolean"}
        ),
        "Model": _obj(
            ["id", "object", "created", "owned_by"],
            id={"type": "string"},
            object={"const": "model"},
            created={"type": "integer"},
            owned_by={"type": "string"},
        ),
        "ModelList": _obj(["object", "data"], object={"const": "list"}, data={"type": "array", "items": _ref("Model")}),
        "ValidationReport": _obj(
            ["is_valid", "errors", "warnings", "estimated_items"],
            is_valid={"type": "boolean"},
            errors={"type": "array", "items": {"type": "string"}},
            warnings={"type": "array", "items": {"type": "string"}},
            estimated_items={"type": "integer", "minimum": 0},
        ),
        "HealthStatus": _obj(["status"], status={"enum": ["healthy", "unhealthy"]}),
        "Readiness": _obj(
            ["status"],
            status={"enum": ["ready", "unavailable"]},
            components={"type": "object", "additionalProperties": {"enum": ["ok", "missing", "unreachable"]}},
        ),
        "Health": _obj(
            ["status", "service", "version", "components", "processor_initialized", "config_loaded"],
            status={"enum": ["healthy", "unhealthy"]},
            service={"type": "string"},
            version={"type": "string"},
            model={"type": "string"},
            processor_initialized={"type": "boolean"},
            config_loaded={"type": "boolean"},
            components={"type": "object"},
        ),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dropbatch gateway",
            "version": __version__,
            "description": "OpenAI-compatible Files and Batch API over the dropbatch S3 drop-box.",
        },
        "servers": [{"url": "/"}],
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": _paths(),
    }


async def openapi(request: Request) -> Response:
    return JSONResponse(document())


ROUTES = [Route("/openapi.json", openapi, methods=["GET"])]
