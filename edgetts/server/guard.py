"""The ASGI middleware that checks the API key and the body size before any handler runs."""

from __future__ import annotations

import secrets

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgetts.server.errors import ApiError, internal_error

# Paths anyone may read when the server has an API key: a health check carries no key.
OPEN_PATHS = ("/health",)


class Guard:
    """Checks a request before any handler sees it: the API key (every path but /health: the
    API, and /docs and /openapi.json too), then the body size; and answers what a handler raised
    unexpectedly with a 500 in OpenAI's shape.

    Auth comes first so a client with the wrong key learns only that (401), whatever its body.
    The size limit is checked on the declared length and again while reading (chunked bodies);
    it is written out because older FastAPI versions have no such option. The 500 is made here,
    inside the CORS middleware, so a browser can read it (Starlette's own handler for
    ``Exception`` sits outside every middleware: its 500 had no CORS headers).
    """

    def __init__(self, app: ASGIApp, api_key: str | None, max_bytes: int) -> None:
        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        if self.api_key is not None and scope["path"] not in OPEN_PATHS:
            if not self._authorized(headers.get(b"authorization", b"")):
                await _send_error(
                    send,
                    ApiError(
                        401,
                        "incorrect or missing API key (send Authorization: Bearer <key>)",
                        type="authentication_error",
                        code="invalid_api_key",
                    ),
                )
                return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, ApiError(413, self._too_large(), code="request_too_large"))
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # FastAPI turns an HTTPException raised while reading the body into its response.
                raise HTTPException(413, self._too_large())
            return message

        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except Exception:
            if started:  # a response is under way (a stream): nothing else can be sent
                raise
            await _send_error(send, internal_error("internal error"))

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.decode("latin-1").partition(" ")
        expected = (self.api_key or "").encode()
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), expected)

    def _too_large(self) -> str:
        return f"the request body is larger than this server accepts ({self.max_bytes} bytes)"


async def _send_error(send: Send, error: ApiError) -> None:
    await error.response()({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
