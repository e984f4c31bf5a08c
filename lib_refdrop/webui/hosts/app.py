"""What RefDrop adds to the host's FastAPI app once it has started: its error reporting and the REST routes."""

from __future__ import annotations

from collections.abc import Callable


def add_to_app(app, get_store: Callable) -> None:
    """Both additions, each on its own: a failure is printed as one line and never stops the host's start-up."""
    try:
        from . import detect

        detect().register_error_reporting(app)
    except Exception as exc:  # noqa: BLE001 - without it user errors print the host's traceback; never break start-up
        print(f"RefDrop: user errors will print the host's traceback ({exc!r})")
    _mount_routes(app, get_store)


def _mount_routes(app, get_store: Callable) -> None:
    from modules import shared

    from .. import api  # fastapi is needed only here, once the host has an app

    cmd_opts = getattr(shared, "cmd_opts", None)
    try:
        if not api.api_enabled(cmd_opts):
            return  # the host serves no HTTP API (neither --api nor --nowebui)
        api.register_routes(app, get_store, credentials=api.credentials_from_cmd_opts(cmd_opts))
    except AttributeError as exc:
        print(f"RefDrop: REST routes not added ({exc})")
