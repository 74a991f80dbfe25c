"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException


class ApiError(Exception):
    """An error answered in OpenAI's shape; the message says what to change."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


log = logging.getLogger("edgetts.server")


def internal_error(what: str) -> ApiError:
    """A 500 for the exception being handled: the client learns ``what`` failed and an error id,
    not the exception's text (it can name files, paths and settings of the machine); the
    server log has the traceback under the same id. Call it inside an ``except`` block."""
    error_id = secrets.token_hex(4)
    log.exception("%s (error %s)", what, error_id)
    return ApiError(500, f"{what} (error {error_id}; the server log has the details)", type="server_error")


# (an unknown URL is invalid_request_error at OpenAI; not_found_error is for missing objects)
HTTP_ERROR_TYPES = {401: "authentication_error"}


def http_error(exc: HTTPException) -> ApiError:
    """Starlette's own errors (unknown route, wrong method, body too large) in OpenAI's shape."""
    kind = HTTP_ERROR_TYPES.get(exc.status_code, "invalid_request_error")
    code = "request_too_large" if exc.status_code == 413 else None
    return ApiError(exc.status_code, str(exc.detail), type=kind, code=code, headers=exc.headers)


def validation_error(exc: RequestValidationError) -> ApiError:
    """Pydantic's report, first problem first, with the offending field as ``param``."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first.get('msg')}", code="invalid_json")
    if not loc:  # the body as a whole: empty, not JSON (no JSON content type), or not an object
        return ApiError(
            400, "the body must be a JSON object, sent as Content-Type: application/json", code="invalid_json"
        )
    where = ".".join(loc)
    message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return ApiError(400, message, param=where or None)
