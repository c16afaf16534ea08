"""The OpenAPI schema ``/api/schema/`` serves: drf-spectacular's, plus the error responses every
operation really gives, in the one error shape (``api.errors``).

drf-spectacular documents the success response of each operation only; a client (or
Schemathesis, ``tests/api/test_schemathesis.py``) also meets these, each as
``{"error": {"status", "code", "message", "fields"}}``:

- 401 not signed in (``not_authenticated``, ``authentication_failed``), 403 (``permission_denied``:
  e.g. a session without its CSRF token), 429 (``throttled``): every operation;
- 404: an object that is not the user's or does not exist, a list's bad ``cursor``;
- 400 (``invalid``, ``parse_error``): operations that take query parameters or a body, and
  every POST, PUT and PATCH (a state change refused, e.g. starting a bot that cannot start);
- 413 (``request_too_large``: a body above ``DATA_UPLOAD_MAX_MEMORY_SIZE``) and 415
  (``unsupported_media_type``): operations that take a body;
- 409 (``conflict``): ``CONFLICTS``, the operations refused while their object is in use or
  not in the state they need.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.generators import SchemaGenerator

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error of the API (``api.errors``).",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "status": {"type": "integer", "description": "The HTTP status code."},
                "code": {
                    "type": "string",
                    "description": "Machine-readable: invalid, parse_error, not_authenticated, "
                    "authentication_failed, permission_denied, not_found, conflict, throttled, "
                    "request_too_large, unsupported_media_type, ...",
                },
                "message": {"type": "string", "description": "A sentence for people."},
                "fields": {
                    "type": "object",
                    "additionalProperties": {},
                    "description": "Validation errors only: the messages per input field "
                    "(``non_field_errors`` for the others).",
                },
            },
            "required": ["status", "code", "message"],
        }
    },
    "required": ["error"],
}

_DESCRIPTIONS = {
    "400": "Invalid input: the messages per field in ``fields``.",
    "401": "Not signed in (or a bad token).",
    "403": "Not allowed.",
    "404": "No such object (or another user's), or a bad cursor.",
    "409": "The object is in use, or not in the state this needs.",
    "413": "The request body is too large.",
    "415": "The body's content type is not accepted.",
    "429": "Too many requests: retry later.",
}

#: Operations that answer 409 ``conflict`` (``api.errors.Conflict``), as (path, method).
CONFLICTS = {
    ("/api/bots/{id}/", "put"), ("/api/bots/{id}/", "patch"), ("/api/bots/{id}/", "delete"),
    ("/api/accounts/{id}/", "delete"),
    ("/api/backtests/{id}/result/", "get"), ("/api/backtests/{id}/cancel/", "post"),
    ("/api/optimizations/{id}/cancel/", "post"), ("/api/kill-switch/", "delete"),
}  # fmt: skip

_METHODS = {"get", "put", "post", "patch", "delete", "head", "options", "trace"}


class ApiSchemaGenerator(SchemaGenerator):
    """drf-spectacular's generator, then the error responses (module docstring)."""

    def get_schema(self, request: Any = None, public: bool = False) -> dict[str, Any]:
        schema = super().get_schema(request=request, public=public)
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                if method in _METHODS:
                    _document_errors(path, method, operation)
        return schema


def _document_errors(path: str, method: str, operation: dict[str, Any]) -> None:
    codes = ["401", "403", "404", "429"]
    takes_body = "requestBody" in operation
    queries = any(p.get("in") == "query" for p in operation.get("parameters", []))
    if takes_body or queries or method in ("post", "put", "patch"):
        codes.append("400")
    if takes_body:
        codes += ["413", "415"]
    if (path, method) in CONFLICTS:
        codes.append("409")
    responses = operation.setdefault("responses", {})
    for code in sorted(codes):
        responses.setdefault(
            code,
            {
                "description": _DESCRIPTIONS[code],
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        )
