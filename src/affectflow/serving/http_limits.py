"""HTTP limits of the KServe predictor, checked before any parser sees a request: body size (413),
JSON nesting depth (400), content type (415); none of the answers carries a stack trace."""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

log = logging.getLogger("affectflow.serving.kserve")  # the predictor's log: one place to read refusals

DEFAULT_MAX_BODY_MB = 64.0
"""A request's body at most (MiB): 600 s of 16 kHz 16-bit WAV (`max_audio_s`) is 26 MB as base64."""
DEFAULT_MAX_JSON_DEPTH = 32
"""A request's JSON nesting at most: an inference request needs 4 levels, its parameters a few more."""
BINARY_HEADER = "inference-header-content-length"
"""The Open Inference Protocol's binary extension: a JSON header of this many bytes, then raw tensors."""
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*\\?(?:"|\Z)', re.DOTALL)
"""A JSON string, or an unterminated one up to the end: every attempt matches, so cutting strings out
is linear in the body (a pattern that can fail after a long scan is quadratic on crafted input)."""
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = np.zeros(256, np.int32)
_BRACKET_STEP[list(b"[{")], _BRACKET_STEP[list(b"]}")] = 1, -1
_DEPTH_CHUNK = 1 << 20


def json_depth(body: bytes) -> int:
    """How deeply `body`'s arrays and objects nest, counted without parsing it (a parser recurses:
    100,000 levels were an HTTP 500); strings are cut out first, so brackets inside them do not
    count. Linear time, memory bounded by `_DEPTH_CHUNK` whatever the body."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = peak = 0
    for at in range(0, len(brackets), _DEPTH_CHUNK):
        running = np.cumsum(_BRACKET_STEP[np.frombuffer(brackets[at:at + _DEPTH_CHUNK], np.uint8)]) + depth
        peak, depth = max(peak, int(running.max())), int(running[-1])
    return peak


def content_type_problem(headers: dict[str, str]) -> str | None:
    """Why a request body's content type is not one this server reads, else None: JSON (no content
    type is taken as JSON, as KServe does), or the binary extension with its header length."""
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    if not ctype or ctype == "application/json" or ctype.endswith("+json") or BINARY_HEADER in headers:
        return None
    return (f"content type {ctype!r} is not accepted: send the inference request as JSON (Content-Type: "
            f"application/json), or the binary extension with an {BINARY_HEADER!r} header")


class RequestLimits:
    """ASGI middleware in front of KServe's FastAPI app (installed by `main`): a body over
    `max_body_bytes` is a 413 (counted as it arrives, whatever Content-Length says), JSON nested
    deeper than `max_json_depth` a 400, a content type other than JSON a 415, before any parser runs.
    Answers are KServe's `{"error": ...}`, naming the limit and the flag that sets it, nothing else."""

    def __init__(self, app: Any, max_body_bytes: int, max_json_depth: int):
        self.app, self.max_body_bytes, self.max_json_depth = app, max_body_bytes, max_json_depth

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        if problem := content_type_problem(headers):
            await _refuse(send, 415, problem)
            return
        too_big = (f"request body is over {self.max_body_bytes} bytes; this server takes at most that "
                   f"(--max_body_mb {self.max_body_bytes / 2**20:g})")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _refuse(send, 413, too_big)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await _refuse(send, 413, too_big)
                return
            if not message.get("more_body", False):
                break
        header = headers.get(BINARY_HEADER, "")
        json_part = bytes(body[:int(header)] if header.isdigit() else body)
        depth = json_depth(json_part)
        if depth > self.max_json_depth:
            await _refuse(send, 400, f"request JSON nests {depth} levels deep; this server takes at most "
                                     f"{self.max_json_depth} (--max_json_depth); an inference request needs 4")
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


async def _refuse(send: Any, status: int, message: str) -> None:
    import json

    log.warning("refused a request: HTTP %d %s", status, message)
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def install_request_limits(app: Any, max_body_mb: float, max_json_depth: int) -> None:
    """Put `RequestLimits` in front of KServe's FastAPI app (before the server starts)."""
    if max_body_mb <= 0 or max_json_depth < 1:
        raise SystemExit(f"--max_body_mb {max_body_mb} and --max_json_depth {max_json_depth} must be positive")
    app.add_middleware(RequestLimits, max_body_bytes=int(max_body_mb * 2**20), max_json_depth=max_json_depth)
