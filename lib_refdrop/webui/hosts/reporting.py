"""How RefDrop's errors reach the user through the host: one console line for a user error, a traceback for a bug.

A problem found while planning a generation is raised from the first attn1 call (docs/hosts.md, "Errors", says why).
Through the API the exception then leaves the host's ``/sdapi/v1/txt2img`` route and is answered by the host's
FastAPI exception handling, which prints a full traceback for every exception it did not expect: reForge's
``modules/api/api.py`` (``api_middleware``: the ``exception_handling`` middleware and ``handle_exception``)
through ``errors.report``, Forge's ``webui.py`` ``_handle_exception`` from starlette's ``ServerErrorMiddleware``,
which answers and then re-raises, so uvicorn logs "Exception in ASGI application". Both build the body from
``vars(exc)`` (``status_code``, ``detail``, ``body``) and ``str(exc)``.

:func:`register_error_handler` adds an exception handler for ``RefDropError`` only, to the app's own registry
(starlette's ``ExceptionMiddleware`` looks handlers up by exception class, inside every user middleware), so
such an error is answered there with the host's body and one console line; every other exception keeps the
host's handling and traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from ...errors import RefDropError

# The key under which each host's handler puts ``str(exc)``: reForge's handle_exception says "errors", Forge's
# webui._handle_exception "message" (the host adapters name theirs; this is the fallback).
DEFAULT_MESSAGE_KEY = "errors"
_MAX_MIDDLEWARE_DEPTH = 64


def console_line(exc: BaseException) -> str:
    """The one line printed for a user error: ``RefDrop: <message>``, newlines folded."""
    text = " ".join(str(exc).split())
    return text if text.startswith("RefDrop: ") else f"RefDrop: {text}"


def error_body(exc: BaseException, message_key: str = DEFAULT_MESSAGE_KEY) -> dict:
    """The JSON body the host's own handler gives for ``exc`` (``vars(exc)`` fields, then the message)."""
    fields = vars(exc)
    return {
        "error": type(exc).__name__,
        "detail": fields.get("detail", ""),
        "body": fields.get("body", ""),
        message_key: str(exc),
    }


def make_error_handler(message_key: str = DEFAULT_MESSAGE_KEY, print_line: Callable[[str], None] | None = None):
    """A starlette exception handler for ``RefDropError``: prints one line, answers the host's status and body."""
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import JSONResponse

    def default_print(line: str) -> None:
        print(line, file=sys.stderr, flush=True)  # where the hosts print their error reports

    show = print_line or default_print

    async def refdrop_error_handler(request, exc):
        show(console_line(exc))
        status = int(vars(exc).get("status_code", 400))
        return JSONResponse(status_code=status, content=jsonable_encoder(error_body(exc, message_key)))

    return refdrop_error_handler


def live_exception_middleware(app):
    """The ``ExceptionMiddleware`` of the middleware stack ``app`` already built, or None if none is built yet."""
    from starlette.middleware.exceptions import ExceptionMiddleware

    node = getattr(app, "middleware_stack", None)
    for _ in range(_MAX_MIDDLEWARE_DEPTH):
        if node is None or isinstance(node, ExceptionMiddleware):
            return node
        node = getattr(node, "app", None)  # every starlette middleware keeps the app it wraps here
    return None


def register_error_handler(app, message_key: str = DEFAULT_MESSAGE_KEY, print_line=None) -> None:
    """Answer ``RefDropError`` on ``app`` with the host's body and one console line (idempotent).

    The app builds its middleware stack once, copying the handler registry into its ``ExceptionMiddleware``.
    reForge resets the stack before extensions start (``initialize_util.setup_middleware``), so the registry
    entry is used when it is rebuilt; Forge's stack is already built during gradio's launch and never rebuilt,
    so the handler also goes to the live ``ExceptionMiddleware``. Rebuilding the stack instead would switch on
    middlewares the host added too late (Forge's GZip and CORS) and change every other route.
    """
    handler = make_error_handler(message_key, print_line)
    app.add_exception_handler(RefDropError, handler)
    live = live_exception_middleware(app)
    if live is not None:
        live.add_exception_handler(RefDropError, handler)

