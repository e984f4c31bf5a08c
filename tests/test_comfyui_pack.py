"""The ComfyUI node pack driven through a fake ModelPatcher that replays the recorded ComfyUI traces
(tests/support/comfyfake.py; shared/host-traces/comfyui). Every node runs as ComfyUI runs a V1 node: its
``INPUT_TYPES``, ``IS_CHANGED``/``VALIDATE_INPUTS`` and ``FUNCTION``."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lib_refdrop.comfyui import nodes
from lib_refdrop.comfyui.chunks import ChunkNames, run_uuids
from lib_refdrop.comfyui.folders import Library
from lib_refdrop.comfyui.routes import add_routes, list_all
from lib_refdrop.comfyui.sampling import HostKernels
from lib_refdrop.comfyui.schema import node_specs, v1_mappings
from lib_refdrop.errors import RefDropError
from tests.support.comfyfake import FakeVAE, kernel, patcher_for, sample
from tests.support.hostsim import load_trace, traces_dir

if traces_dir() is None:
    pytest.fail("shared/host-traces not found beside the repository", pytrace=False)

SD15_CASES = ("t2i_basic", "t2i_batch2", "t2i_batch3_cfg", "t2i_cfg1", "t2i_heun", "t2i_dpmpp2m_karras", "t2i_res",
              "i2i", "t2i_split", "t2i_combine", "t2i_twopass", "t2i_sag")
KERNELS = HostKernels(attention=kernel, flux_ops=lambda: None)
WINDOW = {"step_start": 0.0, "step_end": 1.0}
USE_DEFAULTS = {"disabled_groups": "", "disabled_blocks": "", "skip_first_up": False, **WINDOW}


def trace(case):
    return load_trace("comfyui", case)


@pytest.fixture
def lib(tmp_path):
    folder = tmp_path / "refdrop"
    folder.mkdir()
    return Library(lambda: [str(folder)])


@pytest.fixture
def pack(lib):
    classes, names = v1_mappings(node_specs(lib, kernels=KERNELS))
    return {name: cls for name, cls in classes.items()}


def run_node(pack, node_id, **inputs):
    """As ComfyUI's executor: validation (VALIDATE_INPUTS with its own arguments), then the node's FUNCTION."""
    cls = pack[node_id]
    declared = cls.INPUT_TYPES()
    assert set(inputs) <= set(declared["required"]) | set(declared["optional"])
    assert set(declared["required"]) <= set(inputs), set(declared["required"]) - set(inputs)
    if hasattr(cls, "VALIDATE_INPUTS"):
        ok = cls.VALIDATE_INPUTS(reference=inputs["reference"])
        if ok is not True:
            raise RefDropError(ok)
    return getattr(cls(), cls.FUNCTION)(**inputs)


def save(pack, model, name, profile="exact", overwrite=False, **kw):
    return run_node(pack, "SDRefDropSave", model=model, name=name, overwrite=overwrite, profile=profile,
                    **WINDOW, **kw)


def use(pack, model, reference, rfg, **kw):
    return run_node(pack, "SDRefDropUse", model=model, reference=reference, rfg=rfg, **{**USE_DEFAULTS, **kw})[0]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def saved(pack, lib, case="t2i_basic", name="cat", profile="exact", seed=0):
    t = trace(case)
    model = patcher_for(t)
    patched, handle = save(pack, model, name, profile)
    outs = sample(patched, t, seed)
    return t, model, outs, handle


# -- Save and Use ------------------------------------------------------------------------------------------------

def test_save_is_plain_use_at_its_settings_is_save_and_c0_is_plain(pack, lib):
    t, model, saved_outs, handle = saved(pack, lib)
    plain = sample(model, t)
    assert same(saved_outs, plain)
    assert handle.name == "cat" and lib.names() == ["cat"]
    assert lib.store_of("cat").manifest("cat")["profile"] == "exact"
    assert same(sample(use(pack, model, "cat", 1.0), t), plain)
    assert same(sample(use(pack, model, "cat", 0.0), t), plain)
    other_plain = sample(model, t, seed=5)
    guided_model = use(pack, model, "cat", 0.5)
    guided = sample(guided_model, t, seed=5)
    assert not same(guided, other_plain)
    assert same(sample(guided_model, t, seed=5), guided)  # a cached Use node's MODEL sampled again: the same
    assert same(sample(model, t, seed=5), other_plain)  # the node's MODEL and the patcher are unchanged


def test_a_reference_from_t2i_basic_guides_every_recorded_case(pack, lib):
    saved(pack, lib)
    for case in SD15_CASES:
        t = trace(case)
        model = patcher_for(t)
        plain = sample(model, t, seed=3)
        guided = sample(use(pack, model, "cat", 0.4), t, seed=3)
        assert len(guided) == len(t["calls"]), case
        assert not same(guided, plain), case
        assert same(sample(use(pack, model, "cat", 0.0), t, seed=3), plain), case


@pytest.mark.parametrize("case", ["t2i_heun", "t2i_split", "t2i_combine", "t2i_cfg1", "t2i_sag"])
def test_each_case_saved_and_used_at_its_own_settings_is_plain(pack, lib, case):
    t, model, saved_outs, _ = saved(pack, lib, case, name=case.replace("_", "-"))
    plain = sample(model, t)
    assert same(saved_outs, plain)
    assert same(sample(use(pack, model, case.replace("_", "-"), 1.0), t), plain)


def test_lean_profile_save_is_plain_and_projects_through_the_models_layers(pack, lib):
    t, model, outs, _ = saved(pack, lib, profile="lean", name="lean")
    plain = sample(model, t)
    assert same(outs, plain)
    guided = sample(use(pack, model, "lean", 1.0), t)
    errors = []
    for f in range(0, len(plain), 16):  # per forward: the saved sigmas come back from int8 rows (close, not exact);
        # the fake's layer inputs are unrelated from one sigma to the next, so those between are interpolated far off
        error = torch.cat([(a - b).flatten() for a, b in zip(guided[f:f + 16], plain[f:f + 16], strict=True)])
        errors.append(float(error.norm() / torch.cat([b.flatten() for b in plain[f:f + 16]]).norm()))
    assert 0 < min(errors) < 0.02 and max(errors) > 0, errors


def test_a_batch_attends_to_the_first_image_of_the_references_batch(pack, lib):
    t, model, _, _ = saved(pack, lib, "t2i_batch2", name="two-images")
    plain = sample(model, t)
    guided = sample(use(pack, model, "two-images", 1.0), t)
    rows = t["calls"][0]["q"][0] // 2  # uncond then cond chunks of 2 images: the reference is each chunk's image 0
    firsts = [torch.cat([o[i * rows:i * rows + 1] for i in range(2)]) for o in guided]
    assert same(firsts, [torch.cat([o[i * rows:i * rows + 1] for i in range(2)]) for o in plain])
    assert not same(guided, plain)


def test_a_two_pass_graph_saves_its_first_sampling_run_only(pack, lib):
    t = trace("t2i_twopass")
    model = patcher_for(t)
    patched, handle = save(pack, model, "two")
    assert same(sample(patched, t), sample(model, t))
    first_run = next(e for e in t["events"] if e["event"] == "outer_sample")["sigmas"]["values"][:-1]
    manifest = lib.store_of("two").manifest("two")
    assert manifest["generation"]["sigmas"][:-1] == pytest.approx(first_run)


def test_save_step_window_records_only_its_sigmas(pack, lib):
    t = trace("t2i_basic")
    model = patcher_for(t)
    patched, _ = run_node(pack, "SDRefDropSave", model=model, name="half", overwrite=False, profile="exact",
                          step_start=0.0, step_end=0.5)
    assert same(sample(patched, t), sample(model, t))
    sigmas = sorted({round(s["sigma"], 4) for s in lib.store_of("half").manifest("half")["slots"]}, reverse=True)
    assert sigmas == [14.6146, 2.9183]


# -- SAG and other nodes' patches --------------------------------------------------------------------------------

def test_an_earlier_attn1_patch_is_chained_and_sags_negative_pass_is_named_negative(pack, lib):
    t = trace("t2i_sag")
    model = patcher_for(t)
    seen = []

    def attn_and_record(q, k, v, extra_options):
        seen.append(list(extra_options["cond_or_uncond"]))
        return kernel(q, k, v, extra_options)

    model.set_model_attn1_replace(attn_and_record, "middle", 0, 0)
    plain = sample(model, t)
    assert len(seen) == 8 and [0] in seen  # SAG's own pass says [0] to SAG's patch
    patched, _ = save(pack, model, "sag")
    seen.clear()
    assert same(sample(patched, t), plain)
    assert seen == [[1, 0], [0]] * 4  # still called, with ComfyUI's own labels
    slots = lib.store_of("sag").manifest("sag")["slots"]
    chunks = {(round(s["sigma"], 3), s["occurrence"]) for s in slots}
    assert (14.615, 1) in chunks  # the negative prompt's second evaluation at a sigma: SAG's pass


def test_chunks_are_named_by_uuid_in_every_recorded_case():
    for case in SD15_CASES:
        t = trace(case)
        for run in (e for e in t["events"] if e["event"] == "outer_sample"):
            conds = {kind: [{"uuid": c["uuid"]} for c in run["conds"][kind]] for kind in ("positive", "negative")}
            names = ChunkNames(*run_uuids(conds))
            negative = {c["uuid"] for c in run["conds"]["negative"]}
            for call in (c for c in t["calls"] if c["pass"] == run["run"]):
                labels = names.options({"cond_or_uncond": call["cond_or_uncond"], "uuids": call["uuids"]})
                expected = [1 if u in negative else 0 for u in call["uuids"]]
                assert labels["cond_or_uncond"] == expected, (case, call["uuids"])


# -- sources, masks, several references --------------------------------------------------------------------------

def image_tensor(seed=0, size=16):
    return torch.rand((1, size, size, 3), generator=torch.Generator().manual_seed(seed))


def test_image_batch_and_saved_references_chain_with_masks(pack, lib):
    t, model, _, _ = saved(pack, lib)
    plain = sample(model, t, seed=2)
    cond = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1)), {}]]
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 4:12] = 1
    (refs,) = run_node(pack, "SDRefDropReference", source="image", reference="", rfg=0.3, image=image_tensor())
    (refs,) = run_node(pack, "SDRefDropReference", source="batch", reference="", rfg=0.2, previous=refs)
    guided = use(pack, model, "cat", 0.3, mask=mask, references=refs, vae=FakeVAE(), image_conditioning=cond)
    outs = sample(guided, t, seed=2)
    assert not same(outs, plain) and len(outs) > len(plain)  # the image's reference pass adds its rows
    (zero,) = run_node(pack, "SDRefDropReference", source="image", reference="", rfg=0.0, image=image_tensor())
    assert same(sample(use(pack, model, "cat", 0.0, references=zero, vae=FakeVAE(), image_conditioning=cond), t,
                       seed=2), plain)


def test_a_use_node_takes_three_references_at_most(pack, lib):
    saved(pack, lib)
    refs = None
    for _ in range(3):
        (refs,) = run_node(pack, "SDRefDropReference", source="reference", reference="cat", rfg=0.1,
                           previous=refs)
    model = patcher_for(trace("t2i_basic"))
    with pytest.raises(RefDropError, match=r"^RefDrop: a Use takes at most 3 references, got 4$"):
        use(pack, model, "cat", 0.3, references=refs)
    assert same(sample(use(pack, model, nodes.NONE, 0.3, references=refs), trace("t2i_basic"), seed=1),
                sample(use(pack, model, nodes.NONE, 0.3, references=refs), trace("t2i_basic"), seed=1))


# -- errors on the node that caused them ---------------------------------------------------------------------------

def one_line(exc_info):
    text = str(exc_info.value)
    assert text.startswith("RefDrop: ") and "\n" not in text
    return text


def test_errors_are_raised_by_the_node_that_caused_them(pack, lib):
    t, model, _, _ = saved(pack, lib)
    with pytest.raises(RefDropError) as bad_name:
        save(pack, model, "../evil")
    assert "name" in one_line(bad_name)
    with pytest.raises(RefDropError) as taken:
        save(pack, model, "cat")
    assert "already exists" in one_line(taken)
    with pytest.raises(RefDropError) as missing:
        use(pack, model, "dog", 0.3)
    assert "'dog' not found" in one_line(missing) and "cat" in str(missing.value)
    with pytest.raises(RefDropError) as block:
        use(pack, model, "cat", 0.3, disabled_blocks="OUT99")
    assert "OUT99" in one_line(block)
    with pytest.raises(RefDropError) as window:
        use(pack, model, "cat", 0.3, step_start=0.8, step_end=0.2)
    assert "step window" in one_line(window)
    sdxl = patcher_for(t, config="SDXL")
    with pytest.raises(RefDropError) as family:
        use(pack, sdxl, "cat", 0.3)
    assert "SD1.5" in one_line(family) and "SDXL" in str(family.value)
    with pytest.raises(RefDropError) as no_vae:
        run_node(pack, "SDRefDropReference", source="image", reference="", rfg=0.3)
    assert "IMAGE" in one_line(no_vae)
    assert pack["SDRefDropUse"].VALIDATE_INPUTS(reference="a/b") != True  # noqa: E712
    assert pack["SDRefDropUse"].VALIDATE_INPUTS(reference="saved-later") is True


# -- caching -------------------------------------------------------------------------------------------------------

def test_use_reruns_when_its_reference_changes_on_disk_and_save_always_reruns(pack, lib):
    t, model, _, _ = saved(pack, lib)
    fingerprint = lambda: pack["SDRefDropUse"].IS_CHANGED(model=model, reference="cat", rfg=0.3)  # noqa: E731
    before = fingerprint()
    assert fingerprint() == before
    patched, _ = save(pack, model, "cat", overwrite=True)
    sample(patched, t, seed=9)
    assert fingerprint() != before
    after = fingerprint()
    lib.store_of("cat").set_mask("cat", _png(Image.new("L", (8, 8), 255)))
    assert fingerprint() != after
    ref_fp = pack["SDRefDropReference"].IS_CHANGED(source="reference", reference="cat", rfg=0.1)
    assert ref_fp == pack["SDRefDropReference"].IS_CHANGED(source="reference", reference="cat", rfg=0.1)
    nan = pack["SDRefDropSave"].IS_CHANGED(name="cat")
    assert math.isnan(nan)


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_reference_list_is_read_again_on_every_schema_request(pack, lib):
    assert pack["SDRefDropUse"].INPUT_TYPES()["required"]["reference"][0] == [nodes.NONE]
    saved(pack, lib)
    assert pack["SDRefDropUse"].INPUT_TYPES()["required"]["reference"][0] == [nodes.NONE, "cat"]


def test_save_preview_attaches_the_decoded_image(pack, lib):
    t, model, _, handle = saved(pack, lib)
    assert lib.store_of("cat").read_preview("cat") is None
    run_node(pack, "SDRefDropSavePreview", images=image_tensor(3, 32), save=handle)
    png = lib.store_of("cat").read_preview("cat")
    assert Image.open(io.BytesIO(png)).size == (32, 32)
    with pytest.raises(RefDropError) as unsaved:
        run_node(pack, "SDRefDropSavePreview", images=image_tensor(), save=save(pack, model, "new")[1])
    assert "has not saved" in one_line(unsaved)


def test_a_webui_folder_beside_comfyuis_is_read_and_saves_go_to_the_first(tmp_path, lib):
    first, webui = tmp_path / "comfy", tmp_path / "webui"
    two = Library(lambda: [str(first), str(webui)])
    pack = v1_mappings(node_specs(two, kernels=KERNELS))[0]
    t = trace("t2i_basic")
    model = patcher_for(t)
    webui_lib = Library(lambda: [str(webui)])
    webui_pack = v1_mappings(node_specs(webui_lib, kernels=KERNELS))[0]
    patched, _ = save(webui_pack, model, "forge-cat")
    sample(patched, t)
    assert two.names() == ["forge-cat"]
    assert same(sample(use(pack, model, "forge-cat", 1.0), t), sample(model, t))
    patched, _ = save(pack, model, "comfy-cat")
    sample(patched, t)
    assert (first / "comfy-cat" / "manifest.json").is_file()
    (more,) = run_node(pack, "SDRefDropReference", source="reference", reference="forge-cat", rfg=1.0)
    both = use(pack, model, "comfy-cat", 1.0, references=more)  # one Use, references of both folders
    assert same(sample(both, t), sample(model, t))


# -- routes ----------------------------------------------------------------------------------------------------------

class _Routes:
    def __init__(self):
        self.table = {}

    def __getattr__(self, method):
        return lambda path: (lambda handler: self.table.setdefault((method.upper(), path), handler))


class _Web:
    @staticmethod
    def json_response(body, status=200):
        return status, json.loads(json.dumps(body))

    @staticmethod
    def Response(body, content_type, headers):  # noqa: N802 - aiohttp's name
        return 200, body


class _Request:
    def __init__(self, name=None, body=b""):
        self.match_info = {"name": name}
        self._body = body

    async def read(self):
        return self._body


def test_routes_answer_like_the_webuis_api(pack, lib):
    import asyncio

    saved(pack, lib)
    routes = _Routes()
    add_routes(routes, lib, web=_Web)
    call = lambda method, path, *a: asyncio.run(routes.table[(method, "/refdrop/v1/references" + path)](  # noqa: E731
        _Request(*a)))
    status, body = call("GET", "")
    assert status == 200 and [r["name"] for r in body["references"]] == ["cat"]
    assert body == list_all(lib)
    status, body = call("GET", "/{name}", "cat")
    assert status == 200 and body["summary"]["family"] == "sd15" and body["preview"] is None
    assert call("GET", "/{name}/preview", "cat")[0] == 404
    assert call("GET", "/{name}", "..")[0] == 400
    assert call("GET", "/{name}", "dog")[0] == 404
    status, body = call("POST", "/{name}/rename", "cat", b'{"new_name": "../x"}')
    assert status == 400 and body["error"] == "RefDropError"
    assert call("POST", "/{name}/rename", "cat", b'{"new_name": "tom"}') == (200, {"old_name": "cat", "name": "tom"})
    assert call("DELETE", "/{name}", "tom") == (200, {"deleted": "tom"})
    assert call("GET", "")[1] == {"references": []}


# -- packaging -------------------------------------------------------------------------------------------------------

def test_importing_the_pack_imports_no_webui_or_comfyui_module():
    code = ("import sys, lib_refdrop.comfyui.schema, lib_refdrop.comfyui.routes, lib_refdrop.comfyui.pack;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('modules', 'gradio', 'fastapi', 'comfy', "
            "'folder_paths', 'comfy_api', 'server', 'aiohttp') or m.startswith('lib_refdrop.webui')];"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_repository_root_is_a_pack_only_inside_comfyui():
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('sdrefdrop_root', "
            "'__init__.py', submodule_search_locations=['.']); m = importlib.util.module_from_spec(spec); "
            "sys.modules['sdrefdrop_root'] = m; spec.loader.exec_module(m);"
            "print(sorted(k for k in vars(m) if not k.startswith('__')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['importlib']"


def test_packaging_files():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] and project["tool"]["comfy"]["PublisherId"]
    lines = (root / "requirements.txt").read_text().splitlines()
    assert [line.split("=")[0] for line in lines if line.strip() and not line.startswith("#")] == ["zstandard"]
    for path in sorted((root / "example_workflows").glob("*.json")):
        workflow = json.loads(path.read_text())
        assert any(n.get("type", "").startswith("SDRefDrop") for n in workflow["nodes"]), path.name


def _unused(*_):
    return np


# -- Flux and Chroma -----------------------------------------------------------------------------------------------

class _FluxPatcher:
    """A tiny Flux or Chroma (tests/support/tinyflux.py, tinychroma.py: ``patches_replace["dit"]`` as ComfyUI's) behind
    ComfyUI's patcher calls; ``sample`` does what ``CFGGuider.sample`` does around the sampler (a per-run copy of
    ``model_options``, the OUTER_SAMPLE wrappers with the guider as ``executor.class_obj``)."""

    def __init__(self, inner, wrappers=None):
        self.inner, self.model, self.wrappers = inner, inner.model, wrappers or {}
        self.model_options = inner.model_options
        self.load_device = torch.device("cpu")

    def clone(self):
        return _FluxPatcher(self.inner.clone(), {t: {k: list(v) for k, v in w.items()} for t, w in
                                                 self.wrappers.items()})

    def add_wrapper_with_key(self, kind, key, fn):
        self.wrappers.setdefault(kind, {}).setdefault(key, []).append(fn)

    def get_model_object(self, name):
        return getattr(self.model, name)


def flux_sample(model, seed, cfg, frames=0):
    from tests.support import tinyflux as tf
    from tests.support.comfyfake import Guider, _Executor, copy_nested_dicts

    guider = Guider(model, copy_nested_dicts(model.model_options), {}, cfg)

    def inner(*args):
        run = model.inner.clone()
        run.model_options = guider.model_options
        return tf.sample(run, seed=seed, cfg=cfg, frames=frames)

    wrappers = [w for ws in model.wrappers.get("outer_sample", {}).values() for w in ws]
    sigmas = torch.tensor(tf.FlowSchedule().sigmas(3))
    return _Executor(wrappers, inner, guider)(None, torch.zeros(1, 16, 8, 8), None, sigmas, None, None, False, seed)


@pytest.fixture
def flux_kernels(monkeypatch):
    """ComfyUI's kernel module as the fake hosts have it (the reForge stand-in: the same kernel)."""
    import importlib.util
    from pathlib import Path

    from lib_refdrop.patcher import kernels

    path = Path(__file__).resolve().parent / "support/fakehost/reforge/ldm_patched/ldm/modules/attention.py"
    spec = importlib.util.spec_from_file_location("comfy_kernel_standin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "comfy_kernel_standin", module)
    return HostKernels(attention=kernels.optimized_attention("comfy_kernel_standin"),
                       flux_ops=lambda: kernels.optimized_flux_ops("comfy_kernel_standin"))


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_flux_save_is_plain_use_at_its_settings_is_save_and_c0_is_plain(lib, flux_kernels, cfg):
    from tests.support import tinyflux as tf

    pack = v1_mappings(node_specs(lib, kernels=flux_kernels))[0]
    model = _FluxPatcher(tf.make_patcher("reforge"))
    plain = flux_sample(model, 1, cfg)
    patched, _ = save(pack, model, "flux", profile="exact")
    assert torch.equal(flux_sample(patched, 1, cfg), plain)
    assert lib.store_of("flux").manifest("flux")["family"] == "flux"
    assert torch.equal(flux_sample(use(pack, model, "flux", 1.0), 1, cfg), plain)
    assert torch.equal(flux_sample(use(pack, model, "flux", 0.0), 2, cfg), flux_sample(model, 2, cfg))
    assert not torch.equal(flux_sample(use(pack, model, "flux", 0.5), 2, cfg), flux_sample(model, 2, cfg))
    with pytest.raises(RefDropError) as family:
        use(pack, patcher_for(trace("t2i_basic")), "flux", 0.3)
    assert "Flux" in one_line(family)


@pytest.mark.parametrize("make", ["tinyflux", "tinychroma"])
def test_a_dit_save_that_keeps_each_blocks_input_gives_the_exact_references_use(lib, flux_kernels, make):
    """Through the pack's DiT path at real CFG (ComfyUI's chunk labels on the blocks' input calls too): a Save that
    keeps each block's input (native) is plain, and a Use of it projected with the model's blocks is the exact
    reference's Use, bit for bit."""
    from benchmarks.candidates import offering
    from lib_refdrop.reference.profiles import READ_ONLY
    from tests.support import tinychroma, tinyflux

    pack = v1_mappings(node_specs(lib, kernels=flux_kernels))[0]
    model = _FluxPatcher({"tinyflux": tinyflux, "tinychroma": tinychroma}[make].make_patcher(
        "reforge" if make == "tinyflux" else "comfyui"))
    with offering([READ_ONLY["input"]]):
        patched, _ = save(pack, model, "input", profile="input")
        assert torch.equal(flux_sample(patched, 1, 3.0), flux_sample(model, 1, 3.0))
    assert lib.store_of("input").manifest("input")["chunks"] == ["uncond0", "cond0"]
    flux_sample(save(pack, model, "exact", profile="exact")[0], 1, 3.0)
    assert torch.equal(flux_sample(use(pack, model, "input", 0.5), 2, 3.0),
                       flux_sample(use(pack, model, "exact", 0.5), 2, 3.0))


def test_chroma_save_is_plain_use_at_its_settings_is_save_and_c0_is_plain(lib, flux_kernels):
    """ComfyUI 0.3.6x's Chroma (its own block classes: ``addcmul`` residuals; the dit hook's ``args`` carry
    ``transformer_options``; the modulations come as ``vec``) through the pack, as a Flux model goes through it."""
    from tests.support import tinychroma as tc

    pack = v1_mappings(node_specs(lib, kernels=flux_kernels))[0]
    model = _FluxPatcher(tc.make_patcher("comfyui"))
    plain = flux_sample(model, 1, 1.0)
    patched, _ = save(pack, model, "chroma", profile="exact")
    assert torch.equal(flux_sample(patched, 1, 1.0), plain)
    assert lib.store_of("chroma").manifest("chroma")["family"] == "chroma"
    assert torch.equal(flux_sample(use(pack, model, "chroma", 1.0), 1, 1.0), plain)
    assert torch.equal(flux_sample(use(pack, model, "chroma", 0.0), 2, 1.0), flux_sample(model, 2, 1.0))
    assert not torch.equal(flux_sample(use(pack, model, "chroma", 0.5), 2, 1.0), flux_sample(model, 2, 1.0))


@pytest.mark.parametrize("family", ["qwen_image", "wan"])
def test_qwen_image_and_wan_save_is_plain_use_at_its_settings_is_save_and_c0_is_plain(lib, flux_kernels, family,
                                                                                     monkeypatch):
    """ComfyUI 0.3.6x's Qwen-Image and Wan (image-to-video, a 3-frame clip, at real CFG; the pack's own ``wan_ops``
    with ComfyUI's ``apply_rope1``) through the pack: the blocks through ``patches_replace["dit"]``."""
    from tests.support import tinyqwen as tq
    from tests.support import tinywan as tw

    for name, module in tw.comfy_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    pack = v1_mappings(node_specs(lib, kernels=flux_kernels))[0]
    inner = tq.make_patcher("comfyui") if family == "qwen_image" else tw.make_patcher("comfyui", image_to_video=True)
    model, frames = _FluxPatcher(inner), 3 if family == "wan" else 0
    plain = flux_sample(model, 1, 3.0, frames)
    patched, _ = save(pack, model, family, profile="exact")
    assert torch.equal(flux_sample(patched, 1, 3.0, frames), plain)
    assert lib.store_of(family).manifest(family)["family"] == family
    assert torch.equal(flux_sample(use(pack, model, family, 1.0), 1, 3.0, frames), plain)
    assert torch.equal(flux_sample(use(pack, model, family, 0.0), 2, 3.0, frames), flux_sample(model, 2, 3.0, frames))
    assert not torch.equal(flux_sample(use(pack, model, family, 0.5), 2, 3.0, frames),
                           flux_sample(model, 2, 3.0, frames))


def test_sdxl_save_is_plain_and_use_at_its_settings_is_save(pack, lib):
    t = trace("sdxl_t2i_basic")
    model = patcher_for(t, config="SDXL")
    plain = sample(model, t)
    patched, _ = save(pack, model, "xl")
    assert same(sample(patched, t), plain)
    manifest = lib.store_of("xl").manifest("xl")
    assert manifest["family"] == "sdxl" and len(manifest["layers"]) == 70
    assert same(sample(use(pack, model, "xl", 1.0), t), plain)
    assert not same(sample(use(pack, model, "xl", 0.5), t, seed=4), sample(model, t, seed=4))
