"""RefDrop for Forge / reForge: the script the host loads, its three hooks and its callbacks.

``before_process`` reads this generation's arguments (with X/Y/Z overrides), ``process_before_every_sampling``
patches the U-Net of each pass and ``postprocess`` finishes a Save; docs/hosts.md says when the hosts run them.
Hosts swallow exceptions raised in hooks, so a problem found here becomes a patch that raises at the first
self-attention call, which stops the generation with RefDrop's message (docs/hosts.md, "Errors").
"""

from __future__ import annotations

import traceback

from modules import script_callbacks, scripts

from lib_refdrop import TITLE
from lib_refdrop.errors import RefDropError
from lib_refdrop.params import for_generation
from lib_refdrop.run import RefDropRun, abandon_unfinished_saves, failing_patch
from lib_refdrop.webui import hosts, infotext, opts, panel, xyz
from lib_refdrop.webui.hosts.app import add_to_app
from lib_refdrop.webui.hosts.save_status import status_line

try:
    from modules.ui_components import InputAccordion
except ImportError:  # very old hosts: panel.build falls back to an accordion with a checkbox
    InputAccordion = None

_last_save = {"writer": None}  # the most recent Save, for the panel's status line (🔄 and the page's polling)


def last_save_status() -> str:
    return status_line(_last_save["writer"])


class RefDropScript(scripts.Script):
    sorting_priority = 15.5

    def title(self):
        return TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        controls = panel.build(
            elem_id=self.elem_id, get_store=opts.get_store, input_accordion=InputAccordion,
            default_rfg=opts.default_rfg(), default_overwrite=opts.overwrite_default(),
            get_status=last_save_status, label=TITLE,
        )
        self.infotext_fields = infotext.fields(controls.inputs)
        self.paste_field_names = []
        return controls.args

    def before_process(self, p, *args):
        """This generation's run, or the patch that fails it, kept on ``p`` for the hooks that follow."""
        abandon_unfinished_saves()  # a failed or interrupted generation never reached postprocess
        p.refdrop_run = p.refdrop_failing_patch = None
        try:
            settings = for_generation(args, xyz.overrides(p))  # RefDropError only if the args ask for RefDrop
        except RefDropError as exc:
            p.refdrop_failing_patch = failing_patch(exc)
            return
        if settings.enabled:
            p.refdrop_run = RefDropRun(settings, opts.get_store(), default_profile=opts.default_profile(),
                                       bake_trajectories=opts.bake_trajectories())

    def process_before_every_sampling(self, p, *args, **kwargs):
        """Once per pass (Forge: twice for the hires pass, the first result discarded), so idempotent."""
        run, patch = getattr(p, "refdrop_run", None), getattr(p, "refdrop_failing_patch", None)
        if run is None and patch is None:
            infotext.clear(p.extra_generation_params)  # X/Y/Z cells share this dict
            return
        host = hosts.detect()  # a U-Net or a DiT model (Flux, docs/flux.md): the run plans either
        host.install(p, host.pass_patches(p, run, patch))
        if run is not None:
            profile = run.recorder.profile.name if run.settings.saving and run.recorder is not None else None
            infotext.write(p.extra_generation_params, run.settings, saved_as=run.save_name, profile=profile)

    def postprocess(self, p, processed, *args):
        run = getattr(p, "refdrop_run", None)
        if run is None:
            return
        interrupted = hosts.detect().interrupted()
        run.release(generation_finished=not interrupted)  # an interrupted Use keeps nothing it began baking
        if run.writer is None:
            return
        if interrupted:
            abandon_unfinished_saves()
            text = f"RefDrop: reference '{run.save_name}' was not saved: the generation was interrupted"
        else:
            text = run.finish_save(hosts.generation_info(p), hosts.first_image(processed))
        _last_save["writer"] = run.writer
        if text and hasattr(processed, "comments"):
            processed.comments = f"{processed.comments or ''}{text}\n"


# -- registration (runs once, when the host imports this file) ---------------------------------------------

def _on_ui_settings():
    import gradio as gr
    from modules import shared

    opts.register(shared, gr)


def _register_xyz():
    try:
        xyz.register(opts.get_store)
    except Exception:  # noqa: BLE001 - the X/Y/Z plot is optional; never break the UI for it
        traceback.print_exc()


opts.apply_ram_budget()
script_callbacks.on_ui_settings(_on_ui_settings)
_register_xyz()  # at import too: --nowebui builds the X/Y/Z axes before on_before_ui (docs/hosts.md, "Hooks")
script_callbacks.on_before_ui(_register_xyz)
script_callbacks.on_app_started(lambda demo, app: add_to_app(app, opts.get_store))
