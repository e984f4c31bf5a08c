"""RefDrop for Forge / reForge: the thin wiring between the WebUI and ``lib_refdrop``.

Hooks used (host-api.md §1.2): ``before_process`` (settings of this generation, X/Y/Z overrides),
``process_before_every_sampling`` (patch a clone of the U-Net, write the infotext) and ``postprocess`` (finish a
Save). Hosts swallow exceptions raised in hooks, so a problem found here is turned into a patch that raises at the
first self-attention call: the generation then stops with RefDrop's message instead of silently ignoring it. An
API request stopped that way is answered by RefDrop's handler on the host's app (``lib_refdrop/hosts/reporting.py``):
the host's 400 body and one console line instead of the host's traceback.
"""

from __future__ import annotations

import traceback
from dataclasses import asdict

from modules import script_callbacks, scripts

from lib_refdrop import families, generation, hosts, infotext, options, ui, xyz
from lib_refdrop import settings as settings_module
from lib_refdrop.engine import make_failing_patch
from lib_refdrop.errors import RefDropError
from lib_refdrop.generation import PassContext, RefDropRun
from lib_refdrop.hosts.reporting import make_internal_error_patch, register_error_handler

try:
    from modules.ui_components import InputAccordion
except ImportError:  # very old hosts: ui.build falls back to an accordion with a checkbox
    InputAccordion = None

TITLE = xyz.SCRIPT_TITLE
_last_save = {"writer": None}  # the most recent Save, for the panel's status line (🔄 updates it)


def last_save_status() -> str:
    writer = _last_save["writer"]
    if writer is None:
        return ""
    status = writer.status
    if status.state == "writing":
        return f"RefDrop: saving reference '{status.name}'… ({status.bytes // 1_000_000} MB so far; 🔄 to update)"
    return status.message


def settings_for(p, args) -> settings_module.RefDropSettings:
    """The panel (or API) arguments merged with this X/Y/Z cell's overrides, validated once."""
    base = settings_module.from_args(args)
    overrides = xyz.overrides(p)
    if not overrides:
        return base
    return settings_module.build({**asdict(base), **overrides})


def _wants_refdrop(args) -> bool:
    """Whether the raw arguments switch RefDrop on (used to decide if a validation error matters)."""
    args = list(args)
    if not args:
        return False
    if isinstance(args[0], dict):
        named = args[0]
        value = named.get("enabled", bool(named))
    else:
        value = args[0]
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"))


def generation_info(p) -> dict:
    """What the reference remembers about the generation that made it (shown in the panel's info line)."""
    seeds = getattr(p, "all_seeds", None) or [getattr(p, "seed", None)]
    prompts = getattr(p, "all_prompts", None) or [getattr(p, "prompt", "")]
    negatives = getattr(p, "all_negative_prompts", None) or [getattr(p, "negative_prompt", "")]
    return {
        "width": getattr(p, "width", None),
        "height": getattr(p, "height", None),
        "steps": getattr(p, "steps", None),
        "sampler_name": getattr(p, "sampler_name", None),
        "scheduler": getattr(p, "scheduler", None),
        "seed": seeds[0],
        "prompt": prompts[0],
        "negative_prompt": negatives[0],
        "cfg_scale": getattr(p, "cfg_scale", None),
        "denoising_strength": getattr(p, "denoising_strength", None),
        "model_name": getattr(p, "sd_model_name", None),
        "model_hash": getattr(p, "sd_model_hash", None),
    }


class RefDropScript(scripts.Script):
    sorting_priority = 15.5

    def title(self):
        return TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        controls = ui.build(
            elem_id=self.elem_id,
            get_store=options.get_store,
            input_accordion=InputAccordion,
            default_rfg=options.default_rfg(),
            default_overwrite=options.overwrite_default(),
            get_status=last_save_status,
            label=TITLE,
        )
        self.infotext_fields = infotext.fields(controls.inputs)
        self.paste_field_names = []
        return controls.args

    # -- generation hooks ---------------------------------------------------------------------------------

    def before_process(self, p, *args):
        generation.abandon_unfinished_saves()  # a failed or interrupted generation never reached postprocess
        p.refdrop_run = None
        p.refdrop_error = None
        try:
            settings = settings_for(p, args)
        except RefDropError as exc:
            if _wants_refdrop(args) or xyz.overrides(p):
                p.refdrop_error = str(exc)
            return
        if settings.enabled:
            p.refdrop_run = RefDropRun(settings, options.get_store(), default_profile=options.default_profile())

    def process_before_every_sampling(self, p, *args, **kwargs):
        if not hasattr(p, "refdrop_error"):  # a host path without before_process
            self.before_process(p, *args)
        params = p.extra_generation_params
        run, error = p.refdrop_run, p.refdrop_error
        if error is None and run is None:
            infotext.clear(params)  # X/Y/Z cells share this dict
            return
        forge_objects = p.sd_model.forge_objects
        unet = forge_objects.unet
        try:
            if error is not None:
                raise RefDropError(error)
            attention = hosts.attention()
            ctx = PassContext(
                family=families.family_of(p.sd_model),
                is_hr_pass=bool(getattr(p, "is_hr_pass", False)),
                percent_to_sigma=lambda pct: hosts.percent_to_sigma(unet, pct),
                attention=attention,
                inner=hosts.make_inner(hosts.earlier_attn1_patches(unet), attention),
                seed=(getattr(p, "all_seeds", None) or [None])[0] or getattr(p, "seed", None),
            )
            patch = run.patch_for_pass(ctx)
        except RefDropError as exc:
            patch = make_failing_patch(str(exc))
        except Exception as exc:  # noqa: BLE001 - anything here would be swallowed by the host: fail visibly
            patch = make_internal_error_patch(exc)  # the host prints its traceback when the generation stops
        if patch is not None:
            forge_objects.unet = hosts.install(unet, patch)
        if run is not None:
            profile = (run.settings.profile or options.default_profile()) if run.settings.saving else None
            infotext.write(params, run.settings, saved_as=run.save_name, profile=profile)

    def postprocess(self, p, processed, *args):
        run = getattr(p, "refdrop_run", None)
        if run is None or run.writer is None:
            return
        if _interrupted():
            generation.abandon_unfinished_saves()
            text = f"RefDrop: reference '{run.save_name}' was not saved: the generation was interrupted"
        else:
            images = getattr(processed, "images", None) or []
            first = getattr(processed, "index_of_first_image", 0)  # skip the grid of a batch
            preview = images[first] if len(images) > first else (images[0] if images else None)
            text = run.finish_save(generation_info(p), preview)
        _last_save["writer"] = run.writer
        if text and hasattr(processed, "comments"):
            processed.comments = f"{processed.comments or ''}{text}\n"


def _interrupted() -> bool:
    try:
        from modules import shared
    except ImportError:
        return False
    state = getattr(shared, "state", None)
    return bool(getattr(state, "interrupted", False))


# -- registration (runs once, when the host imports this file) ---------------------------------------------

def _on_ui_settings():
    import gradio as gr
    from modules import shared

    options.register(shared, gr)


def _register_xyz():
    try:
        xyz.register(options.get_store)
    except Exception:  # noqa: BLE001 - the X/Y/Z plot is optional; never break the UI for it
        traceback.print_exc()


def _register_routes(demo, app):
    try:
        from lib_refdrop import api
    except ModuleNotFoundError as exc:
        if exc.name != "lib_refdrop.api":
            raise
        return
    from modules import shared

    cmd_opts = getattr(shared, "cmd_opts", None)
    try:
        if not api.api_enabled(cmd_opts):
            return  # the host serves no HTTP API (neither --api nor --nowebui)
        api.register_routes(app, options.get_store, credentials=api.credentials_from_cmd_opts(cmd_opts))
    except AttributeError as exc:
        print(f"RefDrop: REST routes not added ({exc})")


def _register_error_reporting(app):
    try:
        register_error_handler(app, hosts.api_error_message_key())
    except Exception as exc:  # noqa: BLE001 - without it user errors print the host's traceback; never break start-up
        print(f"RefDrop: user errors will print the host's traceback ({exc!r})")


def _on_app_started(demo, app):
    _register_error_reporting(app)
    _register_routes(demo, app)


options.apply_ram_budget()
script_callbacks.on_ui_settings(_on_ui_settings)
_register_xyz()  # at import: API-only (--nowebui) builds the X/Y/Z axes before on_before_ui (host-api.md §3)
script_callbacks.on_before_ui(_register_xyz)
script_callbacks.on_app_started(_on_app_started)
