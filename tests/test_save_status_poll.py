"""The panel's status line and reference list update by themselves when a background Save completes.

javascript/refdrop.js clicks the panel's hidden poll button while the log under the images or the status line
says a Save is being written; the button's callback answers with what changed. Here: the callback, wired by the
real panel, against the real script's status and a real writer on a temporary store; and the JavaScript in node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from lib_refdrop.params import build
from lib_refdrop.reference.sigmas import Slot
from lib_refdrop.reference.writer import ReferenceWriter
from lib_refdrop.run import SAVING, RefDropRun
from lib_refdrop.webui import opts as options
from lib_refdrop.webui import panel as ui
from tests.support import fakehost
from tests.support.faultkit import GENERATION, make_reference, recording, run_generation, slot_tensors, trace_calls
from tests.support.node import node_binary

REPO = Path(__file__).resolve().parents[1]
JS = REPO / "javascript" / "refdrop.js"
HARNESS = Path(__file__).with_name("refdrop_poll_harness.js")
NO_CHANGE = gr.update()


@pytest.fixture
def host(tmp_path):
    with fakehost.activated("forge", models_path=tmp_path / "models"):
        yield SimpleNamespace(script=fakehost.load_script(), store=options.get_store())


def build_panel(host):
    """The panel as scripts/refdrop.py builds it: the script's store and its status of the last Save."""
    with gr.Blocks() as demo:
        controls = ui.build(elem_id=lambda item: f"script_txt2img_refdrop_{item}", get_store=options.get_store,
                            get_status=host.script.last_save_status)
    return demo, controls


def wired_callback(demo, component):
    """The function gradio runs when ``component`` is clicked."""
    for index, dependency in enumerate(demo.dependencies):
        if component._id in dependency["targets"] and dependency["trigger"] == "click":
            return demo.fns[index].fn, dependency
    raise AssertionError("nothing is wired to the component's click")


def held_writer(store, name: str) -> tuple[ReferenceWriter, threading.Event]:
    """A real writer whose first slot waits for ``release``: "saving" until the test lets it finish."""
    release = threading.Event()
    writer = ReferenceWriter(store, name, overwrite=False)
    recorded = recording(sigmas=(14.6, 1.2))  # few slots: the writer's queue (3) takes them while it waits
    for slot in recorded.slots:
        ready = release.wait if slot.index == 0 else (lambda: None)
        writer.put_slot(Slot(slot.index, slot.sigma, 0), 0, slot_tensors(0, slot.index), ready)
    writer.finish("sd15", GENERATION, recorded, None)
    return writer, release


def test_poll_reports_a_background_save_when_it_completes(host):
    make_reference(host.store, "older")
    demo, controls = build_panel(host)
    x = controls.extras
    poll, dependency = wired_callback(demo, x["poll"])
    ids = [c._id for c in (controls.inputs["reference"], x["status"], x["poll"], x["shown"])]
    assert dependency["inputs"] == [x["shown"]._id] and dependency["outputs"] == ids
    assert x["poll"].visible is False and x["poll"].elem_id == "script_txt2img_refdrop_poll"
    assert controls.inputs["reference"].choices == [*ui._NONE_FIRST, "older"]
    shown = x["shown"].value

    reference, status, label, shown = poll(shown)  # no Save yet: nothing to change
    assert reference == NO_CHANGE and status == NO_CHANGE and label == gr.update(value="1")

    writer, release = held_writer(host.store, "hero")
    host.script._last_save["writer"] = writer  # what the script's postprocess does at the end of a Save
    try:
        reference, status, label, shown = poll(shown)
        assert reference == NO_CHANGE  # not listed before it is complete
        assert status["value"].startswith(SAVING) and "'hero'" in status["value"]
        assert label == gr.update(value="2")
        reference, status, _, shown = poll(shown)
        assert reference == NO_CHANGE and status == NO_CHANGE
    finally:
        release.set()
    assert writer.wait(30) and writer.status.state == "saved", writer.status.message

    reference, status, label, shown = poll(shown)
    assert status == gr.update(value=writer.status.message) and "saved reference 'hero'" in status["value"]
    assert reference == gr.update(choices=[*ui._NONE_FIRST, "hero", "older"])
    assert "value" not in reference  # the user's pick stays as it is
    assert label == gr.update(value="4")
    reference, status, label, shown = poll(shown)
    assert reference == NO_CHANGE and status == NO_CHANGE and label == gr.update(value="5")


def test_poll_after_refresh_and_delete_sends_only_what_changed(host):
    demo, controls = build_panel(host)
    x = controls.extras
    poll, _ = wired_callback(demo, x["poll"])
    refresh, _ = wired_callback(demo, x["refresh"])
    make_reference(host.store, "fox")
    _, _, shown = refresh("", x["shown"].value, "Save")
    assert shown["choices"] == ["fox"]
    assert poll(shown)[0] == NO_CHANGE  # 🔄 already showed "fox"
    delete, dependency = wired_callback(demo, x["delete_confirm"])
    assert x["shown"]._id in dependency["inputs"] and x["shown"]._id in dependency["outputs"]
    *_, shown = delete("fox", shown)
    assert shown["choices"] == [] and poll(shown)[0] == NO_CHANGE
    shutil.rmtree(host.store.root)  # the folder vanishes: no traceback, nothing changed
    assert poll(shown)[:2] == (NO_CHANGE, NO_CHANGE)


def test_every_saving_text_starts_with_the_marker_the_page_looks_for(host):
    """The page reads two texts: the log under the images (run.py) and the status line (the script)."""
    writer, release = held_writer(host.store, "hero")
    host.script._last_save["writer"] = writer
    try:
        assert host.script.last_save_status().startswith(SAVING)
    finally:
        release.set()
        writer.wait(30)
    run = RefDropRun(build({"enabled": True, "mode": "Save", "save_name": "log"}), host.store)
    run_generation(run, trace_calls(limit=16))
    assert run.finish_save({}, None).startswith(SAVING)
    run.writer.wait(30)
    assert f'const SAVING = "{SAVING}";' in JS.read_text(encoding="utf-8")


def run_js(scenario: str) -> dict:
    node = node_binary()
    done = subprocess.run([node, str(HARNESS), str(JS), scenario], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_js_sends_nothing_on_an_idle_page_and_one_poll_after_a_quick_save():
    result = run_js("quick")
    assert result["callbacks"] == 1 and result["idle_clicks"] == 0
    assert result["first_click_at"] == 0 and result["clicks_1s"] == 1 and result["clicks_3600s"] == 1
    assert result["img2img_clicks"] == 1  # the other tab's list is refreshed once
    assert result["txt2img_status"].startswith("RefDrop: saved reference")
    assert result["clicks_after_same_log"] == 0
    # a pending answer neither dims the status line nor stretches it to gradio's loading height
    assert len(result["styles"]) == 1 and "_refdrop_status" in result["styles"][0]
    assert "min-height: 0 !important" in result["styles"][0] and "opacity: 1 !important" in result["styles"][0]


def test_js_polls_each_second_while_saving_and_stops_when_saved():
    result = run_js("slow_write")
    assert (result["clicks_1s"], result["clicks_2s"], result["clicks_5s"]) == (2, 3, 4)
    assert result["clicks_3600s"] == 4 and result["max_in_flight"] == 1


def test_js_waits_for_a_slow_answer_before_polling_again():
    result = run_js("slow_answer")
    assert result["max_in_flight"] == 1 and result["clicks_2s"] == 1 and result["clicks_3600s"] == 2


def test_js_gives_up_on_a_save_that_never_ends_and_on_a_lost_answer():
    stuck = run_js("stuck")
    assert stuck["clicks_10s"] == 11  # one a second at first
    assert 60 < stuck["clicks_120s"] < 120  # then one every 5 s
    assert stuck["clicks_1900s"] == stuck["clicks_3600s"] < 450  # and none after 30 minutes
    lost = run_js("lost_answer")
    assert lost["clicks_3600s"] == 1
