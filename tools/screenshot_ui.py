"""Screenshots of the RefDrop panel for the README: docs/img/refdrop-use.png, refdrop-save.png, refdrop-advanced.png.

How they are made (say so wherever they are shown): this is NOT a full WebUI host. It is a standalone gradio 3.41.2
(reForge's gradio version, default theme) render of ``lib_refdrop.webui.panel.build`` inside one ``gr.Blocks()``, built
the way ``scripts/refdrop.py`` builds it: host-style element ids (``script_txt2img_refdrop_<item>``) and the host's
``InputAccordion`` (the copy in tests/support/fakehost, which reproduces both hosts' gradio-3 class). The checkbox
the hosts draw in that accordion's header comes from their ``inputAccordion.js``; a few lines below
(``HEADER_CHECKBOX_JS``) imitate it. Not present: the host's style.css, its other scripts and tabs, and RefDrop's
tooltip script.

The references are real ones: the engine's Save patch and the background writer record synthetic attn1 calls (no
U-Net, as in tests/test_ui.py) into a temporary store; the preview picture is drawn with PIL. The page is served on
127.0.0.1 only and captured with headless Chromium (/usr/bin/chromium) over the DevTools protocol. Every state is
reached with real mouse clicks on a fresh page: open the Reference dropdown and pick "red fox", click the "Save"
radio, pick "red fox" and open "Advanced". Each picture is clipped to the RefDrop accordion.

gradio 3.41.2 cannot serve pages with the current starlette (its template call changed), so run it in a venv with
reForge's pins, on top of the system packages (torch etc.):

    python -m venv --system-site-packages /tmp/shotvenv
    /tmp/shotvenv/bin/pip install fastapi==0.94.0 pydantic==1.10.15
    GRADIO_ANALYTICS_ENABLED=False /tmp/shotvenv/bin/python -m tools.screenshot_ui   # from the repository root

Needs ``apt-get install chromium fonts-noto-color-emoji`` (without an emoji font the 🔄 button is an empty box) and
the ``websockets`` package (>= 11, for its sync client).
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]

import gradio as gr  # noqa: E402 - after the analytics switch
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from lib_refdrop.reference.store import ReferenceStore  # noqa: E402
from lib_refdrop.webui import panel as ui  # noqa: E402

OUT = REPO / "docs" / "img"
CHROMIUM = "/usr/bin/chromium"
PAGE_WIDTH = 760  # about the width of the scripts column of a txt2img tab on a 1600 px screen
ACCORDION = "script_txt2img_refdrop_enabled"

REFERENCES = {
    "red fox": {"width": 512, "height": 768, "steps": 24, "sampler_name": "DPM++ 2M", "scheduler": "Karras",
                "seed": 1234567, "prompt": "a red fox sitting in fresh snow, winter forest at dawn, soft light, "
                                           "detailed fur"},
    "castle at dusk": {"width": 768, "height": 512, "steps": 20, "sampler_name": "Euler a", "scheduler": "Automatic",
                       "seed": 42, "prompt": "a castle on a hill at dusk"},
}

# What the hosts' inputAccordion.js does to an InputAccordion: a checkbox, linked to the accordion, in its header.
HEADER_CHECKBOX_JS = """
(() => {
    const accordion = document.getElementById(%(id)r);
    const span = accordion.querySelector('.label-wrap span');
    const hidden = document.querySelector('#' + %(id)r + '-checkbox input');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.checked = accordion.querySelector('.label-wrap').classList.contains('open');
    box.className = (hidden ? hidden.className : '') + ' input-accordion-checkbox';
    box.style.cssText = 'vertical-align: sub; margin-right: 0.5em;';
    span.prepend(box);
    return true;
})()
"""


# -- a temporary library with real references ---------------------------------------------------------------

def draw_fox(size=(256, 384)) -> Image.Image:
    """A small winter scene with a fox, drawn at twice the size and scaled down for smooth edges."""
    w, h = size[0] * 2, size[1] * 2
    img = Image.new("RGB", (w, h))
    px = ImageDraw.Draw(img)
    top, bottom = (255, 196, 150), (150, 178, 222)  # dawn sky
    for y in range(h):
        t = y / h
        px.line([(0, y), (w, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    px.ellipse([w * 0.62, h * 0.10, w * 0.82, h * 0.23], fill=(255, 236, 200))  # sun
    for x0, height in ((-0.05, 0.30), (0.12, 0.36), (0.78, 0.34), (0.93, 0.28)):  # pines
        cx = w * (x0 + 0.08)
        for level in range(4):
            y_top = h * (0.62 - height + level * height / 5)
            half = w * (0.04 + level * 0.025)
            px.polygon([(cx, y_top), (cx - half, y_top + h * 0.12), (cx + half, y_top + h * 0.12)], fill=(46, 84, 76))
    px.rectangle([0, h * 0.62, w, h], fill=(236, 242, 250))  # snow
    px.ellipse([-w * 0.2, h * 0.56, w * 0.7, h * 0.72], fill=(244, 248, 253))
    fox, dark, white = (214, 96, 38), (70, 40, 30), (250, 246, 240)
    px.ellipse([w * 0.30, h * 0.52, w * 0.66, h * 0.80], fill=fox)  # body
    px.ellipse([w * 0.58, h * 0.70, w * 0.92, h * 0.80], fill=fox)  # tail
    px.ellipse([w * 0.82, h * 0.705, w * 0.93, h * 0.785], fill=white)  # tail tip
    px.ellipse([w * 0.38, h * 0.60, w * 0.52, h * 0.76], fill=white)  # chest
    px.polygon([(w * 0.33, h * 0.42), (w * 0.61, h * 0.42), (w * 0.47, h * 0.56)], fill=fox)  # head
    px.polygon([(w * 0.33, h * 0.42), (w * 0.36, h * 0.33), (w * 0.42, h * 0.42)], fill=fox)  # ears
    px.polygon([(w * 0.52, h * 0.42), (w * 0.58, h * 0.33), (w * 0.61, h * 0.42)], fill=fox)
    px.polygon([(w * 0.355, h * 0.415), (w * 0.365, h * 0.36), (w * 0.40, h * 0.415)], fill=dark)
    px.polygon([(w * 0.54, h * 0.415), (w * 0.575, h * 0.36), (w * 0.585, h * 0.415)], fill=dark)
    px.polygon([(w * 0.40, h * 0.47), (w * 0.54, h * 0.47), (w * 0.47, h * 0.56)], fill=white)  # muzzle
    px.ellipse([w * 0.455, h * 0.54, w * 0.485, h * 0.56], fill=dark)  # nose
    for ex in (0.41, 0.51):
        px.ellipse([w * ex, h * 0.445, w * (ex + 0.03), h * 0.46], fill=dark)  # eyes
    for lx in (0.36, 0.50):
        px.rounded_rectangle([w * lx, h * 0.76, w * (lx + 0.06), h * 0.83], radius=w * 0.02, fill=dark)  # paws
    img = img.filter(ImageFilter.SMOOTH)
    return img.resize(size, Image.LANCZOS)


def save_reference(store: ReferenceStore, name: str, generation: dict, preview) -> str:
    """A real reference written by the engine's Save patch and writer, fed synthetic attn1 calls (no U-Net)."""
    from tests.support.refdrop_harness import save_synthetic

    return save_synthetic(store, name, generation, preview).message


# -- the page -----------------------------------------------------------------------------------------------

def make_page(store: ReferenceStore, last_status: str) -> gr.Blocks:
    from tests.support import fakehost

    with fakehost.activated("none"):
        from modules.ui_components import InputAccordion

        css = f".gradio-container {{ max-width: {PAGE_WIDTH}px !important; }} footer {{ display: none !important; }}"
        with gr.Blocks(title="RefDrop panel", css=css, analytics_enabled=False) as page:
            controls = ui.build(elem_id=lambda item: f"script_txt2img_refdrop_{item}", get_store=lambda: store,
                                input_accordion=InputAccordion, get_status=lambda: last_status, label="RefDrop")
    enabled = controls.inputs["enabled"]
    enabled.value = True  # as after ticking the header checkbox: enabled, accordion open
    enabled.accordion.open = True
    return page


# -- headless Chromium over the DevTools protocol ------------------------------------------------------------

class Browser:
    def __init__(self):
        # Chromium may still write its cache while it exits: a leftover file must not fail the run
        self.profile = tempfile.TemporaryDirectory(prefix="refdrop-shot-chromium-", ignore_cleanup_errors=True)
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={self.profile.name}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile.name) / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.time() > deadline:
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.next_id = 0
        self.send("Emulation.setDeviceMetricsOverride", width=PAGE_WIDTH + 40, height=1400, deviceScaleFactor=1,
                  mobile=False)
        self.send("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "light"}])

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while not self.js(expression):
            if time.time() > deadline:
                raise TimeoutError(expression)
            time.sleep(0.2)

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the first element matching ``selector``."""
        self.wait_for(f"!!document.querySelector({selector!r})")
        box = self.js(f"""(() => {{ const e = document.querySelector({selector!r});
                          e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
                          return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def open(self, url: str) -> None:
        self.send("Page.enable")
        self.send("Page.navigate", url=url)
        self.wait_for(f"!!document.querySelector('#{ACCORDION} .label-wrap')")
        self.js(HEADER_CHECKBOX_JS % {"id": ACCORDION})

    def shot(self, selector: str, path: Path, margin: int = 8) -> None:
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=1, y=1)  # no hover effects in the picture
        self.js("document.activeElement && document.activeElement.blur()")
        time.sleep(0.8)  # let transitions settle
        r = self.js(f"""(() => {{ window.scrollTo(0, 0); const r = document.querySelector({selector!r})
                        .getBoundingClientRect(); return [r.x, r.y + window.scrollY, r.width, r.height]; }})()""")
        clip = {"x": max(r[0] - margin, 0), "y": max(r[1] - margin, 0), "width": r[2] + 2 * margin,
                "height": r[3] + 2 * margin, "scale": 1}
        data = self.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)["data"]
        image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
        image.save(path, optimize=True)  # RGB, no alpha: smaller, and the same on light and dark README themes
        print(f"{path.relative_to(REPO)}: {image.width}×{image.height}, {path.stat().st_size // 1024} KB")

    def close(self) -> None:
        self.ws.close()
        self.process.terminate()
        self.process.wait(10)
        self.profile.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="refdrop-shot-library-") as tmp:
        store = ReferenceStore(Path(tmp) / "refs")
        save_reference(store, "castle at dusk", REFERENCES["castle at dusk"], None)
        last_status = save_reference(store, "red fox", REFERENCES["red fox"], draw_fox())
        page = make_page(store, last_status)
        port = free_port()
        page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    show_api=False, inbrowser=False, share=False)
        browser = Browser()
        url, accordion = f"http://127.0.0.1:{port}/", f"#{ACCORDION}"
        ids = "#script_txt2img_refdrop_"
        try:
            def pick_red_fox():  # Use mode: pick "red fox" in the Reference dropdown
                browser.click(f"{ids}reference input")
                browser.click(f"{ids}reference ul.options li[data-value='red fox']")
                browser.wait_for(f"!!document.querySelector('{ids}preview img') && "
                                 f"document.querySelector('{ids}info').innerText.includes('seed')")

            browser.open(url)
            pick_red_fox()
            browser.shot(accordion, OUT / "refdrop-use.png")

            browser.open(url)  # Save mode
            browser.click(f"{ids}mode input[value='Save']")
            browser.wait_for(f"document.querySelector('{ids}save_name').offsetParent !== null")
            browser.shot(accordion, OUT / "refdrop-save.png")

            browser.open(url)  # Use mode with the Advanced panel open
            pick_red_fox()
            browser.click(f"{ids}advanced .label-wrap")
            browser.wait_for(f"document.querySelector('{ids}disabled_blocks').offsetParent !== null")
            browser.shot(accordion, OUT / "refdrop-advanced.png")
        finally:
            browser.close()
            page.close()


if __name__ == "__main__":
    main()
