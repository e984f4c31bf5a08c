"""scripts/refdrop.py in a fake host: hooks, patch installation and chaining, errors, infotext, X/Y/Z, settings.

U-Net runs use a tiny hostsim SD1.5 U-Net, 8x8 latents and 1 step, driven through the attn1 replace patches that
the script leaves on the (fake) ``UnetPatcher``, looked up exactly like the hosts do.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from lib_refdrop import run as generation
from lib_refdrop.errors import RefDropError, RefDropInternalError
from lib_refdrop.params import RefDropSettings, build, to_args
from lib_refdrop.reference.profiles import DEFAULT_PROFILE
from lib_refdrop.webui import infotext, xyz
from lib_refdrop.webui import opts as options
from tests.support import fakehost
from tests.support.fakehost.objects import FakeUnetPatcher, make_model, make_p, sample_patched

SAMPLE = {"steps": 1, "height": 8, "width": 8, "seed": 1234}


@pytest.fixture(scope="module")
def diffusion_model():
    from tests.support.hostsim import make_unet

    return make_unet("sd15", "tiny")


@pytest.fixture(params=["forge"])
def host(request, tmp_path):
    with fakehost.activated(request.param, models_path=tmp_path / "models"):
        yield SimpleNamespace(flavour=request.param, script_module=fakehost.load_script())


def args_of(**values) -> list:
    return to_args(build(values))


def run_hook(script, p, args) -> None:
    script.before_process(p, *args)
    script.process_before_every_sampling(p, *args, x=None, noise=None, c=None, uc=None)


def new_p(host, diffusion_model, **fields):
    unet = FakeUnetPatcher(make_model(host.flavour, diffusion_model))
    return make_p(unet, **fields), unet


def finish(script, p, args, image=None):
    from modules.processing import Processed

    processed = Processed(p, [image or Image.new("RGB", (8, 8), "blue")])
    script.postprocess(p, processed, *args)
    return processed


def test_registers_callbacks_settings_and_title(host):
    from modules import script_callbacks, shared

    script = host.script_module.RefDropScript()
    assert script.title() == "RefDrop" and script.show(False) is host.script_module.scripts.AlwaysVisible
    assert len(script_callbacks.callbacks["ui_settings"]) == 1
    assert len(script_callbacks.callbacks["before_ui"]) == 1 and len(script_callbacks.callbacks["app_started"]) == 1
    script_callbacks.callbacks["ui_settings"][0]()
    assert set(options.OPTIONS) <= set(shared.opts.data_labels)
    assert all(info.section == options.SECTION for info in shared.opts.data_labels.values())
    assert options.store_folder().endswith("RefDrop") and "models" in options.store_folder()


def test_settings_page_values_are_read_and_applied(host, tmp_path):
    from modules import script_callbacks, shared

    from lib_refdrop.reference.reader import RAM_CACHE

    script_callbacks.callbacks["ui_settings"][0]()
    shared.opts.set("refdrop_store_folder", str(tmp_path / "elsewhere"))
    shared.opts.set("refdrop_default_rfg", 0.45)
    shared.opts.set("refdrop_default_profile", "nonexistent")
    shared.opts.set("refdrop_overwrite_default", True)
    shared.opts.set("refdrop_ram_budget_mb", 512)
    try:
        assert options.get_store().root == (tmp_path / "elsewhere").resolve()
        assert options.default_rfg() == 0.45 and options.default_profile() == DEFAULT_PROFILE
        assert options.overwrite_default() is True
        assert RAM_CACHE.budget == 512 * 1024 * 1024
    finally:
        shared.opts.set("refdrop_ram_budget_mb", options.DEFAULT_RAM_MB)


def test_disabled_installs_nothing_and_clears_infotext(host, diffusion_model):
    script = host.script_module.RefDropScript()
    p, unet = new_p(host, diffusion_model)
    p.extra_generation_params.update({"refdrop_rfg": 0.3, "Other": 1})  # left by an earlier X/Y/Z cell
    clones = FakeUnetPatcher.clones
    run_hook(script, p, args_of())
    assert p.sd_model.forge_objects.unet is unet and FakeUnetPatcher.clones == clones
    assert p.extra_generation_params == {"Other": 1}
    # an invalid value in a disabled panel is no error
    run_hook(script, p, args_of()[:8] + [0.9, 0.1] + args_of()[10:])
    assert p.sd_model.forge_objects.unet is unet


def test_save_then_use_through_the_hooks(host, diffusion_model):
    script = host.script_module.RefDropScript()
    # exact: the fake hosts' U-Net is diffusers', which the layer lookup of an input-keeping profile does not know
    save_args = args_of(enabled=True, mode="Save", save_name="hero", profile="exact")
    p, unet = new_p(host, diffusion_model)
    run_hook(script, p, save_args)
    patched = p.sd_model.forge_objects.unet
    assert patched is not unet and unet.attn1_patches() == {}
    assert len(set(map(id, patched.attn1_patches().values()))) == 1  # one closure for every layer
    saved_latent = sample_patched(patched, **SAMPLE)
    assert p.extra_generation_params["refdrop_saved_as"] == "hero"
    assert p.extra_generation_params["refdrop_profile"] == "exact"

    processed = finish(script, p, save_args)
    assert "hero" in processed.comments
    p.refdrop_run.writer.wait(60)
    assert p.refdrop_run.writer.status.state == "saved"
    assert "saved reference 'hero'" in host.script_module.last_save_status()
    manifest = options.get_store().manifest("hero")
    assert manifest["family"] == "sd15" and manifest["generation"]["seed"] == 1234
    assert manifest["generation"]["prompt"] == "a cat" and options.get_store().read_preview("hero")

    use_args = args_of(enabled=True, mode="Use", reference="hero", rfg=0.6)
    p2, unet2 = new_p(host, diffusion_model)
    run_hook(script, p2, use_args)
    assert p2.sd_model.forge_objects.unet is not unet2
    assert p2.extra_generation_params["refdrop_reference"] == "hero"
    same_seed = sample_patched(p2.sd_model.forge_objects.unet, **SAMPLE)
    torch.testing.assert_close(same_seed, saved_latent)  # exact profile: the reference attends to itself

    p3, unet3 = new_p(host, diffusion_model, all_seeds=[99], seed=99)
    run_hook(script, p3, use_args)
    other = {**SAMPLE, "seed": 99}
    steered = sample_patched(p3.sd_model.forge_objects.unet, **other)
    plain = sample_patched(unet3, **other)
    assert (steered - plain).abs().max() > 1e-3
    readers = list(p3.refdrop_run._readers)
    finish(script, p3, use_args)  # Use has nothing to finish, but releases the reference it opened
    assert readers and p3.refdrop_run._readers == []
    assert "saved reference 'hero'" in host.script_module.last_save_status()


def test_hook_is_idempotent_for_forges_double_hires_call(host, diffusion_model):
    script = host.script_module.RefDropScript()
    args = args_of(enabled=True, mode="Save", save_name="twice")
    p, unet = new_p(host, diffusion_model)
    run_hook(script, p, args)
    run = p.refdrop_run
    writer = run.writer
    p.is_hr_pass = True
    for _ in range(2):  # Forge: before and after the forge_objects reset; the first result is discarded
        p.sd_model.forge_objects.unet = unet
        script.process_before_every_sampling(p, *args)
        assert p.refdrop_run is run and run.writer is writer
        assert p.sd_model.forge_objects.unet is unet  # Save records the first pass only
    generation.abandon_unfinished_saves()

    store = options.get_store()
    hires_use = args_of(enabled=True, mode="Use", reference="twice", apply_hires=True)
    p2, unet2 = new_p(host, diffusion_model, is_hr_pass=True)
    store_patch = []
    script.before_process(p2, *hires_use)
    for _ in range(2):
        p2.sd_model.forge_objects.unet = unet2
        script.process_before_every_sampling(p2, *hires_use)
        store_patch.append(p2.sd_model.forge_objects.unet)
    assert all(u is not unet2 for u in store_patch) and unet2.attn1_patches() == {}
    assert not store.exists("twice")  # abandoned: never reached postprocess


def test_errors_become_a_failing_patch(host, diffusion_model):
    script = host.script_module.RefDropScript()
    p, _ = new_p(host, diffusion_model)
    run_hook(script, p, args_of(enabled=True, mode="Use", reference="missing"))
    with pytest.raises(RefDropError, match="'missing' not found"):
        sample_patched(p.sd_model.forge_objects.unet, **SAMPLE)

    bad = args_of(enabled=True)
    bad[8], bad[9] = 0.9, 0.1  # step window start >= end
    p, _ = new_p(host, diffusion_model)
    run_hook(script, p, bad)
    with pytest.raises(RefDropError, match="step window is empty"):
        sample_patched(p.sd_model.forge_objects.unet, **SAMPLE)

    p, _ = new_p(host, diffusion_model)
    run_hook(script, p, [{"mode": "Use", "reference": "x", "rfg": 3}])  # API named form
    with pytest.raises(RefDropError, match="RFG coefficient must lie in"):
        sample_patched(p.sd_model.forge_objects.unet, **SAMPLE)


BUG = "the model flags cannot be read"


def break_planning(monkeypatch) -> None:
    """A bug while planning a pass: reading the model's family raises something that is not a RefDropError."""
    from lib_refdrop.webui.hosts import host as host_module

    def broken(sd_model):
        raise RuntimeError(BUG)

    monkeypatch.setattr(host_module, "family_of", broken)


@pytest.mark.parametrize("mode", ["Save", "Use"])
def test_internal_errors_also_fail_visibly(host, diffusion_model, monkeypatch, capsys, mode):
    break_planning(monkeypatch)
    script = host.script_module.RefDropScript()
    p, _ = new_p(host, diffusion_model)
    run_hook(script, p, args_of(enabled=True, mode=mode, reference="r"))
    assert capsys.readouterr().err == ""  # the host prints the traceback when the patch stops the generation
    with pytest.raises(RefDropInternalError, match="RefDrop: internal error: RuntimeError") as raised:
        sample_patched(p.sd_model.forge_objects.unet, **SAMPLE)
    assert not isinstance(raised.value, RefDropError)  # a bug: the hosts print its traceback and answer 500
    assert BUG in str(raised.value.__cause__)  # ... which shows where it came from


def test_chains_an_attn1_patch_registered_earlier(host, diffusion_model):
    from tests.support.hostsim import sdpa_attention

    calls = []

    def earlier(q, k, v, extra_options):  # e.g. another extension's patch on the middle block
        calls.append(extra_options["block"])
        return sdpa_attention(q, k, v, extra_options["n_heads"]) * 0.5

    script = host.script_module.RefDropScript()
    p, unet = new_p(host, diffusion_model)
    unet.set_model_attn1_replace(earlier, "middle", 0, 0)
    alone = sample_patched(unet, **SAMPLE)
    assert calls and set(calls) == {("middle", 0)}
    calls.clear()

    args = args_of(enabled=True, mode="Save", save_name="chained")
    run_hook(script, p, args)
    patched = p.sd_model.forge_objects.unet
    assert patched.attn1_patches()[("middle", 0, 0)] is not earlier
    with_refdrop = sample_patched(patched, **SAMPLE)
    assert calls and set(calls) == {("middle", 0)}  # still called, under RefDrop
    torch.testing.assert_close(with_refdrop, alone, rtol=0, atol=0)  # Save itself changes nothing
    finish(script, p, args)
    p.refdrop_run.writer.wait(60)
    assert p.refdrop_run.writer.status.state == "saved"


def test_xyz_cells_override_and_do_not_leak_infotext(host, diffusion_model):
    script = host.script_module.RefDropScript()
    panel = args_of(enabled=True, mode="Use", reference="r", rfg=0.3)
    shared_params = {}
    cell = []
    for rfg in (0.0, 0.5):
        p, _ = new_p(host, diffusion_model)
        p.extra_generation_params = shared_params  # X/Y/Z: copy(p) shares the dict
        xyz.override(p, "rfg", rfg)
        script.before_process(p, *panel)
        cell.append(p.refdrop_run.settings.rfg)
    assert cell == [0.0, 0.5]

    p, _ = new_p(host, diffusion_model)
    xyz.override(p, "rfg", 7)
    run_hook(script, p, panel)
    with pytest.raises(RefDropError, match="RFG coefficient must lie in"):
        sample_patched(p.sd_model.forge_objects.unet, **SAMPLE)

    infotext.write(shared_params, build({"enabled": True, "reference": "r", "step_end": 0.5}))
    p, unet = new_p(host, diffusion_model)
    p.extra_generation_params = shared_params
    run_hook(script, p, args_of())  # a cell with RefDrop off
    assert not any(k.startswith("refdrop_") for k in shared_params)


def test_interrupted_save_is_not_kept(host, diffusion_model):
    from modules import shared

    script = host.script_module.RefDropScript()
    args = args_of(enabled=True, mode="Save", save_name="cut")
    p, _ = new_p(host, diffusion_model)
    run_hook(script, p, args)
    shared.state.interrupted = True  # postprocess still runs after an interrupt
    processed = finish(script, p, args)
    assert "interrupted" in processed.comments
    p.refdrop_run.writer.wait(60)
    assert p.refdrop_run.writer.status.state == "failed" and not options.get_store().exists("cut")


def test_xyz_axes_registered_once_and_refused_when_panel_off(host, tmp_path):
    from modules import script_callbacks, scripts

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None,
                     prepare=None):
            self.label, self.type, self.apply, self.confirm, self.choices = label, type, apply, confirm, choices

    xyz_module = SimpleNamespace(AxisOption=AxisOption, axis_options=[AxisOption("Nothing", str, None)])
    scripts.scripts_data.append(scripts.ScriptClassData(type("XYZ", (), {"__module__": "xyz_grid.py"}), "", "",
                                                        xyz_module))
    module = fakehost.load_script()  # import time registration
    script_callbacks.callbacks["before_ui"][-1]()  # and again from on_before_ui: no duplicates
    labels = [o.label for o in xyz_module.axis_options]
    assert labels == ["Nothing", "[RefDrop] RFG coefficient", "[RefDrop] Reference", "[RefDrop] Mode",
                      "[RefDrop] Step end", "[RefDrop] RFG coefficient (slot 2)", "[RefDrop] Reference (slot 2)",
                      "[RefDrop] RFG coefficient (slot 3)", "[RefDrop] Reference (slot 3)"]
    axes = {o.label: o for o in xyz_module.axis_options}

    script = module.RefDropScript()
    script.args_from, script.args_to = 1, 1 + len(RefDropSettings.__dataclass_fields__)
    p = SimpleNamespace(scripts=SimpleNamespace(alwayson_scripts=[script]), script_args=[None, *args_of()])
    with pytest.raises(RuntimeError, match="enable RefDrop in its panel first"):
        axes["[RefDrop] RFG coefficient"].confirm(p, [0.0, 0.3])
    p.script_args = [None, *args_of(enabled=True)]
    axes["[RefDrop] RFG coefficient"].confirm(p, [0.0, 0.3])
    with pytest.raises(RuntimeError, match="must lie in"):
        axes["[RefDrop] RFG coefficient"].confirm(p, [2.0])
    with pytest.raises(RuntimeError, match="'nope' not found"):
        axes["[RefDrop] Reference"].confirm(p, ["nope"])
    with pytest.raises(RuntimeError, match="mode must be one of"):
        axes["[RefDrop] Mode"].confirm(p, ["Sideways"])
    assert axes["[RefDrop] Mode"].choices() == ["Save", "Use"]
    assert axes["[RefDrop] Reference"].choices() == []
    axes["[RefDrop] Step end"].apply(p, 0.5, [0.5])
    axes["[RefDrop] Mode"].apply(p, "Save", ["Save"])
    assert p.refdrop_xyz == {"step_end": 0.5, "mode": "Save"}


def test_ui_hook_builds_the_panel_with_host_components(host):
    import gradio as gr

    script = host.script_module.RefDropScript()
    script.is_img2img = True
    with gr.Blocks():
        controls = script.ui(True)
    assert type(controls[0]).__name__ == "InputAccordionImpl"
    assert controls[0].accordion_id == "script_img2img_refdrop_enabled"
    assert [component for component, _ in script.infotext_fields] == controls


def test_routes_mounted_only_with_the_api(host):
    from fastapi import FastAPI
    from modules import script_callbacks, shared

    started = script_callbacks.callbacks["app_started"][0]
    app = FastAPI()
    started(None, app)
    assert not any(getattr(r, "path", "").startswith("/refdrop/") for r in app.routes)
    shared.cmd_opts.nowebui = True
    started(None, app)
    assert any(getattr(r, "path", "").startswith("/refdrop/v1/references") for r in app.routes)


@pytest.mark.parametrize("host", ["reforge"], indirect=True)
def test_reforge_adapter_passes_attn_precision(host, diffusion_model):
    from ldm_patched.ldm.modules.attention import CALLS

    from lib_refdrop.webui import hosts

    assert hosts.detect().name == "reforge"
    script = host.script_module.RefDropScript()
    args = args_of(enabled=True, mode="Save", save_name="re")
    p, unet = new_p(host, diffusion_model)
    run_hook(script, p, args)
    plain = sample_patched(unet, host_flavour="reforge", **SAMPLE)
    saved = sample_patched(p.sd_model.forge_objects.unet, host_flavour="reforge", **SAMPLE)
    torch.testing.assert_close(saved, plain, rtol=0, atol=0)
    assert CALLS["n"] > 0 and set(CALLS["attn_precision"]) == {None}
    sigma = hosts.detect().percent_to_sigma
    assert sigma(unet, 0.0) > sigma(unet, 0.5) > sigma(unet, 1.0)
    finish(script, p, args)
    p.refdrop_run.writer.wait(60)


@pytest.mark.parametrize("host", ["forge", "reforge"], indirect=True)
def test_the_host_is_detected_once(host, diffusion_model, monkeypatch):
    import importlib.util

    from lib_refdrop.webui import hosts

    script = host.script_module.RefDropScript()
    args = args_of(enabled=True, mode="Use", reference="nothing-yet")
    run_hook(script, new_p(host, diffusion_model)[0], args)  # the first pass detects the host
    detected = hosts.detect()
    assert detected.name == host.flavour
    lookups = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda *a, **k: lookups.append(a))
    monkeypatch.setattr(hosts, "ADAPTERS", ())  # a second detection would find nothing
    for _ in range(3):
        p, unet = new_p(host, diffusion_model)
        run_hook(script, p, args)
        assert p.sd_model.forge_objects.unet is not unet
    assert hosts.detect() is detected and lookups == []


@pytest.mark.parametrize("host", ["forge", "reforge"], indirect=True)
def test_each_adapter_reads_the_schedule_where_its_host_keeps_it(host, diffusion_model):
    from lib_refdrop.webui import hosts
    from tests.support.fakehost.objects import make_model

    other = {"forge": "reforge", "reforge": "forge"}[host.flavour]
    sigma = hosts.detect().percent_to_sigma
    assert sigma(FakeUnetPatcher(make_model(host.flavour)), 0.0) > sigma(FakeUnetPatcher(make_model(host.flavour)), 1)
    with pytest.raises(AttributeError):  # Forge's predictor, reForge's model_sampling: no guessing between them
        sigma(FakeUnetPatcher(make_model(other)), 0.5)


def test_a_pass_without_before_process_installs_nothing(host, diffusion_model):
    """Every host path runs before_process first (process_images); a pass without it gets nothing to install."""
    script = host.script_module.RefDropScript()
    p, unet = new_p(host, diffusion_model)
    p.extra_generation_params["refdrop_rfg"] = 0.3
    script.process_before_every_sampling(p, *args_of(enabled=True, mode="Use", reference="r"))
    assert p.sd_model.forge_objects.unet is unet and p.extra_generation_params == {}
    assert getattr(p, "refdrop_run", None) is None


def test_the_failing_patch_is_made_once_and_installed_on_every_pass(host, diffusion_model):
    script = host.script_module.RefDropScript()
    bad = [{"mode": "Use", "reference": "x", "rfg": 3}]
    p, unet = new_p(host, diffusion_model, is_hr_pass=True)
    script.before_process(p, *bad)
    assert p.refdrop_run is None
    installed = []
    for _ in range(2):  # Forge's double call for the hires pass
        p.sd_model.forge_objects.unet = unet
        script.process_before_every_sampling(p, *bad)
        installed.append(p.sd_model.forge_objects.unet)
    patches = [set(map(id, u.attn1_patches().values())) for u in installed]
    assert patches[0] == patches[1] and len(patches[0]) == 1 and unet.attn1_patches() == {}
    with pytest.raises(RefDropError, match="RFG coefficient must lie in"):
        sample_patched(installed[1], **SAMPLE)


def test_the_preview_is_the_first_image_after_a_grid():
    from lib_refdrop.webui.hosts import first_image

    grid, first, second = (Image.new("RGB", (8, 8), c) for c in ("white", "red", "green"))
    assert first_image(SimpleNamespace(images=[grid, first, second], index_of_first_image=1)) is first
    assert first_image(SimpleNamespace(images=[first], index_of_first_image=1)) is first
    assert first_image(SimpleNamespace(images=[])) is None


@pytest.mark.parametrize("model_class, blocks", [
    ("NunchakuQwenImageTransformer2DModel", "transformer_blocks"),  # another class on Qwen-Image's blocks
    ("VaceWanModel", "blocks"),                                      # Wan VACE (Wan 2.x itself: test_wan)
    ("ChromaRadiance", "double_blocks"),                     # Chroma's blocks in pixel space (Chroma: test_chroma)
    ("NextDiT", "layers"),                                   # Lumina / Z-Image
])
def test_a_transformer_refdrop_does_not_support_is_refused_by_name(host, model_class, blocks):
    """Not treated as a U-Net whose layers happen never to be called: a Use there would silently do nothing.
    (Qwen-Image and Wan are supported: test_qwen_image.py, test_wan.py.)"""
    model = type(model_class, (torch.nn.Module,), {})()
    setattr(model, blocks, torch.nn.ModuleList())
    script = host.script_module.RefDropScript()
    p, _ = new_p(host, model)
    run_hook(script, p, args_of(enabled=True, mode="Use", reference="anything"))
    patches = set(p.sd_model.forge_objects.unet.attn1_patches().values())
    assert len(patches) == 1
    q = torch.zeros(1, 4, 8)
    with pytest.raises(RefDropError, match=f"this model \\({model_class}\\) is not supported yet"):
        patches.pop()(q, q, q, {"n_heads": 1})
