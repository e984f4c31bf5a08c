"""A rejected API generation prints one line, ``RefDrop: <message>``, and answers the host's 400 body unchanged;
a bug keeps the host's traceback (and answers 500).

The generation runs the script's hooks on a fake ``p`` and samples a tiny hostsim U-Net through the patches they
installed, inside the ``/sdapi/v1/txt2img`` route of a host-like FastAPI app (``tests/support/fakehost/webapp.py``, one
per host family) served by a real uvicorn; RefDrop's handler is registered by firing the script's ``app_started``
callbacks, as the hosts do.
"""

from __future__ import annotations

import httpx
import pytest
from test_script import BUG, SAMPLE, args_of, break_planning, new_p, run_hook

from tests.support import fakehost
from tests.support.fakehost import webapp

MISSING = "RefDrop: reference 'missing' not found"
FLAVOURS = ["reforge", "forge"]
MESSAGE_KEY = {"reforge": "errors", "forge": "message"}


@pytest.fixture(scope="module")
def diffusion_model():
    from tests.support.hostsim import make_unet

    return make_unet("sd15", "tiny")


@pytest.fixture(params=FLAVOURS)
def host(request, tmp_path):
    from types import SimpleNamespace

    with fakehost.activated(request.param, models_path=tmp_path / "models"):
        yield SimpleNamespace(flavour=request.param, script_module=fakehost.load_script())


def generation(host, diffusion_model, args):
    """What the host's txt2img does with these RefDrop arguments: hooks, then sampling."""
    from tests.support.fakehost.objects import sample_patched

    def generate():
        script = host.script_module.RefDropScript()
        p, _ = new_p(host, diffusion_model)
        run_hook(script, p, args)
        sample_patched(p.sd_model.forge_objects.unet, **SAMPLE)

    return generate


def start_app(host, generate, *, refdrop_started: bool):
    from modules import script_callbacks

    app = webapp.APPS[host.flavour](generate)
    if refdrop_started:
        for callback in script_callbacks.callbacks["app_started"]:
            callback(None, app)
    return app


def request(app, capfd, *, warm_up: bool = False):
    """POST txt2img once; returns (status, body, console lines printed while answering)."""
    with webapp.served(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        if warm_up:
            client.get("/docs")
        capfd.readouterr()
        response = client.post("/sdapi/v1/txt2img", json={})
    out, err = capfd.readouterr()
    return response.status_code, response.json(), (out + err).splitlines()


@pytest.mark.parametrize("args", [
    args_of(enabled=True, mode="Use", reference="missing"),
    [{"mode": "Use", "reference": "x", "rfg": 3}],            # API named form, RFG out of range
    [True, "Use", 0.4, "../evil"],                             # positional form, a bad name
])
def test_a_user_error_prints_one_line_and_the_hosts_body(host, diffusion_model, capfd, args):
    generate = generation(host, diffusion_model, args)
    before = request(start_app(host, generate, refdrop_started=False), capfd)
    after = request(start_app(host, generate, refdrop_started=True), capfd)

    status, body, lines = after
    assert (status, body) == before[:2]  # the host's own answer, unchanged
    message = body["detail"]
    assert status == 400 and message.startswith("RefDrop: ")
    assert body == {"error": "RefDropError", "detail": message, "body": "", MESSAGE_KEY[host.flavour]: message}
    assert lines == [message]
    assert len(before[2]) > 20 and any("Traceback" in line for line in before[2])  # what the host prints alone


def test_a_stack_built_before_refdrop_started_gets_the_handler_too(host, diffusion_model, capfd):
    """reForge rebuilds its stack at the first request after start-up; one may have come in before app_started."""
    generate = generation(host, diffusion_model, args_of(enabled=True, mode="Use", reference="missing"))
    app = webapp.APPS[host.flavour](generate)
    with webapp.served(app) as url:
        httpx.get(url + "/docs")  # builds the stack
    assert app.middleware_stack is not None
    from modules import script_callbacks

    for callback in script_callbacks.callbacks["app_started"]:
        callback(None, app)
    status, body, lines = request(app, capfd)
    assert status == 400 and body["detail"].startswith(MISSING)
    assert lines == [body["detail"]]


def test_an_internal_error_keeps_its_traceback_and_answers_500(host, diffusion_model, capfd, monkeypatch):
    break_planning(monkeypatch)  # a bug, not the user's doing
    generate = generation(host, diffusion_model, args_of(enabled=True, mode="Save"))
    status, body, lines = request(start_app(host, generate, refdrop_started=True), capfd)
    text = "\n".join(lines)
    assert status == 500 and body["error"] == "RefDropInternalError"
    assert body[MESSAGE_KEY[host.flavour]].startswith("RefDrop: internal error: RuntimeError")
    assert "Traceback" in text and BUG in text  # the cause is shown
    assert len(lines) > 20


def test_other_exceptions_keep_the_hosts_handling(host, capfd):
    def generate():
        raise ValueError("not RefDrop's")  # e.g. another extension failing during sampling

    status, body, lines = request(start_app(host, generate, refdrop_started=True), capfd)
    assert status == 500 and body["error"] == "ValueError"
    assert any("Traceback" in line for line in lines) and not any(line.startswith("RefDrop") for line in lines)


def test_the_console_line_is_one_line_with_the_prefix():
    from lib_refdrop.errors import RefDropError
    from lib_refdrop.webui.hosts import reporting

    assert reporting.console_line(RefDropError("RefDrop: a\nb  c")) == "RefDrop: a b c"
    assert reporting.console_line(RefDropError("no prefix")) == "RefDrop: no prefix"


def test_register_is_harmless_twice_and_leaves_other_handlers(capfd):
    from fastapi import FastAPI

    from lib_refdrop.errors import RefDropError
    from lib_refdrop.webui.hosts import reporting

    app = FastAPI()
    handlers = dict(app.exception_handlers)
    reporting.register_error_handler(app, "errors")
    reporting.register_error_handler(app, "errors")
    assert {k: v for k, v in app.exception_handlers.items() if k is not RefDropError} == handlers
    assert RefDropError in app.exception_handlers
