"""A reference file made in one host is used in the others (issue 22, item 4): saved and exported through the Forge
script (the fake Forge host), dropped into reForge's store and into a ComfyUI ``refdrop`` folder, and used there at
the same settings on the same random-weight U-Net. The three hosts' attention kernels are the same SDPA here, so
the images are equal bit for bit; in real hosts they differ where the kernels do (docs/share.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lib_refdrop.comfyui.folders import Library
from lib_refdrop.params import build, to_args
from lib_refdrop.reference import bundle
from lib_refdrop.webui import opts as options
from lib_refdrop.webui import panel
from tests.support import comfyhost, fakehost
from tests.support.fakehost.objects import (
    FakeUnetPatcher,
    PerLayerPatcher,
    make_model,
    make_p,
    reforge_kernels_as,
    sample_patched,
)

REPO = Path(__file__).resolve().parents[1]
SAVE_SEED, USE_SEED, RFG = 1234, 99, 0.6
SAMPLE = {"steps": 3, "height": 8, "width": 8}


@pytest.fixture(scope="module")
def diffusion_model():
    from tests.support.hostsim import make_unet

    return make_unet("sd15", "tiny")


def args_of(**values) -> list:
    return to_args(build(values))


def webui_generation(flavour: str, diffusion_model, args, seed: int):
    """One generation through scripts/refdrop.py's hooks in the fake ``flavour`` host; (latent, the run)."""
    script = fakehost.load_script().RefDropScript()
    unet = FakeUnetPatcher(make_model(flavour, diffusion_model))
    p = make_p(unet, seed=seed, all_seeds=[seed])
    script.before_process(p, *args)
    script.process_before_every_sampling(p, *args, x=None, noise=None, c=None, uc=None)
    latent = sample_patched(p.sd_model.forge_objects.unet, **SAMPLE, seed=seed)
    return latent, script, p


def finish(script, p, args):
    from modules.processing import Processed
    from PIL import Image

    script.postprocess(p, Processed(p, [Image.new("RGB", (8, 8), "blue")]), *args)


@pytest.fixture
def comfy_kernels(monkeypatch):
    """``comfy.ldm.modules.attention`` as the fake hosts have it (the reForge stand-in: the same kernel)."""
    reforge_kernels_as(monkeypatch, comfyhost.KERNELS)


def test_a_file_exported_in_forge_gives_the_same_image_in_reforge_and_comfyui(tmp_path, diffusion_model,
                                                                               comfy_kernels):
    from tests.support.hostsim import layer_map

    use_args = args_of(enabled=True, mode="Use", reference="hero", rfg=RFG)
    with fakehost.activated("forge", models_path=tmp_path / "forge"):
        save_args = args_of(enabled=True, mode="Save", save_name="hero", profile="trajectory")
        _, script, p = webui_generation("forge", diffusion_model, save_args, SAVE_SEED)
        finish(script, p, save_args)
        assert p.refdrop_run.writer.wait(60) and p.refdrop_run.writer.status.state == "saved"
        forge, script, p = webui_generation("forge", diffusion_model, use_args, USE_SEED)
        finish(script, p, use_args)
        shared = bundle.export_reference(options.get_store(), "hero", tmp_path)
    plain = sample_patched(FakeUnetPatcher(make_model("forge", diffusion_model)), **SAMPLE, seed=USE_SEED)
    assert (forge - plain).abs().max() > 1e-3  # the reference steers the image

    with fakehost.activated("reforge", models_path=tmp_path / "reforge"):
        store = options.get_store()
        (store.root / shared.name).write_bytes(shared.read_bytes())  # dropped into reForge's models/RefDrop
        assert panel.reference_choices(store) == ["hero"]
        reforge, script, p = webui_generation("reforge", diffusion_model, use_args, USE_SEED)
        finish(script, p, use_args)
    assert torch.equal(reforge, forge)

    comfy_folder = tmp_path / "comfyui" / "refdrop"
    comfy_folder.mkdir(parents=True)
    (comfy_folder / shared.name).write_bytes(shared.read_bytes())  # dropped into ComfyUI's models/refdrop
    library = Library(lambda: [str(comfy_folder)])
    assert library.names() == ["hero"]
    model = PerLayerPatcher(make_model("reforge", diffusion_model))
    layers = [layer.key for layer in layer_map(diffusion_model)]
    used, session = comfyhost.use_node(model, library.save_store(), "hero", RFG, "sd15", seed=USE_SEED,
                                       layers=layers)
    with session:
        comfy = sample_patched(used, **SAMPLE, seed=USE_SEED)
    assert torch.equal(comfy, forge)
