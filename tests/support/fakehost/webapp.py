"""The hosts' FastAPI apps, reduced to how they answer an exception raised during an API generation.

Reproduced from the hosts' code (reForge ``main`` 3b56b268 with fastapi 0.94, Forge ``main`` dfdcbab6 with
fastapi 0.104), served by a real uvicorn on 127.0.0.1 so that what reaches the console is what the hosts print:

- reForge (``modules/api/api.py`` ``api_middleware``): two "http" middlewares, ``log_and_time`` and, outside it,
  ``exception_handling``, which catches every exception and calls ``handle_exception``; the same function is the
  app's handler for ``Exception`` and ``HTTPException``. It prints ``API error: ...`` with the traceback through
  ``modules/errors.py`` ``report`` (except for an ``HTTPException``) and answers ``vars(e)["status_code"]`` (else
  500) with ``{error, detail, body, errors}``. ``webui.py`` resets the middleware stack
  (``initialize_util.setup_middleware``) before the ``app_started`` callbacks, so it is built at the next request.
- Forge (``webui.py``): gradio's app gets ``exception_handlers={Exception: _handle_exception}`` (body
  ``{error, detail, body, message}``, no printing); ``Api.__init__`` does not call ``api_middleware`` (commented
  out there); the stack is built during gradio's launch, before ``create_api`` and ``app_started``. starlette runs
  an ``Exception`` handler in ``ServerErrorMiddleware``, which answers and re-raises, so uvicorn logs
  "Exception in ASGI application" with the traceback.

``/sdapi/v1/txt2img`` is a sync route (the threadpool, like the hosts') that runs ``generate()``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable


def report(message: str, *, exc_info: bool = False) -> None:
    """reForge's ``modules/errors.py`` ``report``."""
    for line in message.splitlines():
        print("***", line, file=sys.stderr)
    if exc_info:
        print(textwrap.indent(traceback.format_exc(), "    "), file=sys.stderr)
        print("---", file=sys.stderr)


def reforge_app(generate: Callable[[], object]):
    from fastapi import FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import HTTPException
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.middleware("http")
    async def log_and_time(req: Request, call_next):
        res = await call_next(req)
        res.headers["X-Process-Time"] = "0"
        return res

    def handle_exception(request: Request, e: Exception):
        err = {"error": type(e).__name__, "detail": vars(e).get("detail", ""), "body": vars(e).get("body", ""),
               "errors": str(e)}
        if not isinstance(e, HTTPException):  # do not print backtrace on known httpexceptions
            report(f"API error: {request.method}: {request.url} {err}", exc_info=True)
        return JSONResponse(status_code=vars(e).get("status_code", 500), content=jsonable_encoder(err))

    @app.middleware("http")
    async def exception_handling(request: Request, call_next):
        try:
            return await call_next(request)
        except Exception as e:
            return handle_exception(request, e)

    @app.exception_handler(Exception)
    async def fastapi_exception_handler(request: Request, e: Exception):
        return handle_exception(request, e)

    @app.exception_handler(HTTPException)
    async def http_exception_handler(request: Request, e: HTTPException):
        return handle_exception(request, e)

    _add_txt2img(app, generate)
    app.middleware_stack = None  # initialize_util.setup_middleware: rebuilt at the next request
    return app


def forge_app(generate: Callable[[], object]):
    from fastapi import FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import JSONResponse

    def _handle_exception(request: Request, e: Exception):
        error_information = vars(e)
        content = {"error": type(e).__name__, "detail": error_information.get("detail", ""),
                   "body": error_information.get("body", ""), "message": str(e)}
        return JSONResponse(status_code=int(error_information.get("status_code", 500)),
                            content=jsonable_encoder(content))

    app = FastAPI(exception_handlers={Exception: _handle_exception})
    app.middleware_stack = app.build_middleware_stack()  # gradio's launch already served a request
    _add_txt2img(app, generate)  # create_api adds its routes afterwards, to the same router
    return app


APPS = {"reforge": reforge_app, "forge": forge_app}


def _add_txt2img(app, generate: Callable[[], object]) -> None:
    def text2imgapi():
        generate()
        return {"images": [], "info": "{}"}

    app.add_api_route("/sdapi/v1/txt2img", text2imgapi, methods=["POST"])


@contextlib.contextmanager
def served(app):
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port; yields the base URL. Its error log goes to stderr."""
    import uvicorn

    log = logging.getLogger("uvicorn.error")
    console = logging.StreamHandler(sys.stderr)  # the stream of this moment: pytest's capture, when active
    log.addHandler(console)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        log.removeHandler(console)
