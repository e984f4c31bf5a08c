"""A profile that keeps each block's input on Flux and Chroma (docs/flux.md, "Profiles"): a Save stores the image
tokens' attention input of every block (what its ``qkv`` / ``linear1`` project, after the norm and the modulation) and
their RoPE rotations; the loader projects them again with the block's own modules (``dit/blocks.py``
``double_image_kv``), so a Use reads K and V as from any profile.

With native storage (the read-only ``input`` format) a Use equals the ``exact`` reference's Use bit for bit on the
tiny models of the tests, in each host's block arithmetic; ``lean`` (int8, every 2nd sigma, zstd) is the default.
"""

from __future__ import annotations

import threading

import pytest
import safetensors.torch
import torch

from benchmarks.candidates import offering
from lib_refdrop.dit import layers as dit_layers
from lib_refdrop.dit.blocks import FluxOps, double_image_kv
from lib_refdrop.errors import RefDropError
from lib_refdrop.reference import compression
from lib_refdrop.reference.address import POSITIONS
from lib_refdrop.reference.profiles import READ_ONLY
from lib_refdrop.reference.store import ReferenceStore
from tests.support import fakehost, faultkit
from tests.support import tinychroma as tc
from tests.support import tinyflux as tf
from tests.support.ditpass import run_pass, save, use

# (fake host, model): Flux through reForge's dit hook, Forge's object patches and Neo's arithmetic; Chroma through
# reForge's own blocks and Neo's (ComfyUI's: tests/test_comfyui_pack.py)
MODELS = {"flux-reforge": ("reforge", tf.make_patcher), "flux-forge": ("forge", tf.make_patcher),
          "flux-neo": ("neo", tf.make_patcher), "chroma-reforge": ("reforge", tc.make_patcher),
          "chroma-neo": ("neo", tc.make_patcher)}
IMAGE_TOKENS = (64 // 16) ** 2  # a 64 px image: an 8x8 latent in 2x2 patches


@pytest.fixture(autouse=True)
def _one_thread_and_native_input():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with offering([READ_ONLY["input"]]):  # each block's input, native: what a Use must match exact with
        yield
    torch.set_num_threads(threads)


@pytest.fixture
def store(tmp_path):
    return ReferenceStore(tmp_path / "store")


def _detected():
    from lib_refdrop.webui import hosts

    return hosts.detect()


@pytest.fixture(params=sorted(MODELS))
def model(request):
    """(the detected fake host, the model's patcher in that host's convention)."""
    flavour, make = MODELS[request.param]
    with fakehost.activated(flavour):
        yield _detected(), make(flavour)


def _slot_files(store, name) -> list[dict[str, torch.Tensor]]:
    """The tensors of every slot file of a reference, as stored."""
    folder, files = store.path(name), [entry for slot in store.manifest(name)["slots"] for entry in slot["files"]]
    data = [(folder / entry["file"]).read_bytes() for entry in files]
    return [safetensors.torch.load(compression.decompress_bounded(raw, entry["raw_bytes"], "a test")
                                   if entry.get("encoding") else raw) for entry, raw in zip(files, data, strict=True)]


def test_native_input_use_is_the_exact_references_use_bit_for_bit(model, store):
    """Save = plain; Use at the Save's settings = Save at any c; at another seed, a Use of the stored inputs projected
    again equals a Use of the stored K and V, bit for bit (the same modules on the same rows: only the batch of the
    projections differs, 1 row instead of the Save's, which gives the same float32 rows on the CPU)."""
    host, unet = model
    plain = tf.sample(unet, seed=1)
    saved = save(host, unet, store, name="input", profile="input", seed=1)
    assert torch.equal(saved, plain)
    save(host, unet, store, name="exact", seed=1)
    for rfg in (0.3, 1.0):
        assert torch.equal(use(host, unet, store, rfg, name="input", seed=1)[0], saved), rfg
    other = use(host, unet, store, 0.5, name="input", seed=5)[0]
    assert torch.equal(other, use(host, unet, store, 0.5, name="exact", seed=5)[0])
    assert (other - tf.sample(unet, seed=5)).abs().mean() > 1e-3


@pytest.mark.parametrize("split", [False, True])
def test_real_cfg_chunks_are_projected_apart(store, split):
    """Real CFG, uncond and cond rows in one call or two: each chunk's inputs are stored apart (one set of positions
    per slot file) and projected to that chunk's K and V."""
    with fakehost.activated("reforge"):
        host, unet = _detected(), tf.make_patcher("reforge")
        save(host, unet, store, name="input", profile="input", cfg=3.0, split=split)
        save(host, unet, store, name="exact", cfg=3.0, split=split)
        assert store.manifest("input")["chunks"] == ["uncond0", "cond0"]
        assert all(sum(key == POSITIONS for key in file) == 1 for file in _slot_files(store, "input"))
        assert torch.equal(use(host, unet, store, 0.4, name="input", seed=4, cfg=3.0, split=split)[0],
                           use(host, unet, store, 0.4, name="exact", seed=4, cfg=3.0, split=split)[0])


def test_lean_keeps_each_blocks_input_in_int8_and_the_image_tokens_positions(store):
    """The default on Flux: every block's input as int8 codes with their scales, every 2nd sampled sigma, and in each
    slot file the RoPE rotations of the image tokens (the model's ``pe`` at those tokens, float32)."""
    with fakehost.activated("reforge"):
        host, unet = _detected(), tf.make_patcher("reforge")
        save(host, unet, store, name="lean", profile="", steps=4)
    manifest = store.manifest("lean")
    assert manifest["profile"] == "lean" and len(manifest["slots"]) == 2
    model = unet.model.diffusion_model
    _, img_ids, txt_ids = tf.patchify(torch.zeros(1, tf.LATENT_CHANNELS, 8, 8), torch.zeros(1, tf.TEXT_TOKENS, 1))
    pe = model.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))[0, 0, tf.TEXT_TOKENS:]
    for tensors in _slot_files(store, "lean"):
        assert torch.equal(tensors.pop(POSITIONS), pe)
        assert set(tensors) == {f"{lid}/cond0/{part}" for lid in manifest["layers"] for part in ("x", "x.scale")}
        assert all(tensors[f"{lid}/cond0/x"].dtype == torch.int8 and tensors[f"{lid}/cond0/x"].shape ==
                   (IMAGE_TOKENS, tf.HIDDEN) for lid in manifest["layers"])


def test_lean_keeps_most_of_the_effect_on_flux(store):
    """``lean``'s losses (int8, every 2nd sigma) on the tiny random Flux, 6 steps: its Use at the Save's settings
    (c = 0.5) against the Save image, and the share of the exact reference's effect it keeps at another seed
    (c = 0.3). Floors from Save seeds 1-5 (seed s, other seed s + 3): 48.3-52.0 dB, 0.77-0.86 kept
    (docs/flux.md, "Profiles")."""
    from benchmarks.profiles import psnr

    with fakehost.activated("reforge"):
        host, unet = _detected(), tf.make_patcher("reforge")
        base = {"steps": 6}
        saved = save(host, unet, store, name="exact", seed=3, **base)
        save(host, unet, store, name="lean", profile="lean", seed=3, **base)
        assert psnr(use(host, unet, store, 0.5, name="lean", seed=3, **base)[0], saved) > 44.0
        exact, lean = (use(host, unet, store, 0.3, name=name, seed=6, **base)[0] for name in ("exact", "lean"))
        effect = exact - tf.sample(unet, seed=6, **base)
        assert 1 - (lean - exact).norm() / effect.norm() > 0.65


def test_the_loader_thread_projects_with_each_blocks_own_modules(store, monkeypatch):
    """Use reads K and V like any profile: the loader turns each saved slot into K and V with the blocks' modules."""
    threads = []

    def watched(block, x, positions, ops):
        threads.append(threading.current_thread().name)
        return double_image_kv(block, x, positions, ops)

    monkeypatch.setattr(dit_layers, "double_image_kv", watched)
    with fakehost.activated("reforge"):
        host, unet = _detected(), tf.make_patcher("reforge")
        save(host, unet, store, name="input", profile="input")
        use(host, unet, store, 0.5, name="input", seed=5)
    assert len(threads) == tf.DOUBLE_BLOCKS * 3 and all(name.startswith("refdrop-loader") for name in threads)


def test_a_flux_input_reference_is_refused_on_another_family(store):
    """Flux and Chroma have the same block names and widths: a reference that keeps Flux's block inputs is refused on
    Chroma by name, and on a U-Net."""
    from lib_refdrop.standalone import context, use_patch

    with fakehost.activated("reforge"):
        host = _detected()
        save(host, tf.make_patcher("reforge"), store, name="flux-lean", profile="lean")
        with pytest.raises(RefDropError, match="'flux-lean' was saved with a Flux model, but the current model is "
                                               "Chroma"):
            run_pass(host, tc.make_patcher("reforge"), {"mode": "Use", "reference": "flux-lean", "rfg": 0.3}, store)
    with pytest.raises(RefDropError, match="'flux-lean' was saved with a Flux model, but the current model is SD1.5"):
        use_patch(store, "flux-lean", 0.3, context("sd15", lambda q, k, v, eo: q, lambda percent: 1.0 - percent))


def _positions(change):
    def forged(tensors):
        return {**tensors, POSITIONS: change(tensors[POSITIONS])}

    return forged


def _without_positions(tensors):
    return {key: value for key, value in tensors.items() if key != POSITIONS}


def _narrower_input(tensors):
    key = "double0.0/cond0/x"
    return {**tensors, key: tensors[key][:, :-1].contiguous()}


def _other_head_size(manifest):
    manifest["layers"]["single1.0"].update(n_heads=tf.HEADS * 2, dim_head=tf.HIDDEN // tf.HEADS // 2)


FORGERIES = {  # what a planted slot file or manifest holds -> what the refusal says
    "positions of another shape": (_positions(lambda p: p[:, :4].contiguous()), None,
                                   r"holds positions as float32 \[16, 4, 2, 2\]; the manifest's layer needs float32 "
                                   r"\[16, 8, 2, 2\]"),
    "positions in half precision": (_positions(lambda p: p.half()), None, "holds positions as float16"),
    "positions beyond ±1": (_positions(lambda p: p * 2), None, "positions that are no rotations"),
    "positions not finite": (_positions(lambda p: p.index_fill(0, torch.tensor([3]), float("nan"))), None,
                             "positions that are no rotations"),
    "no positions": (_without_positions, None, "holds block inputs without the token positions"),
    "an input of another width": (_narrower_input, None, r"holds double0.0/cond0/x as int8 \[16, 63\]"),
    "blocks of another head size": (None, _other_head_size, "blocks differ in tokens or head size"),
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_planted_rows_are_refused_by_name(store, case):
    """Slot files whose checksums pass (re-sealed) but whose tensors do not fit the manifest, or a manifest whose
    blocks no DiT has: refused before any projection, naming the reference and the file."""
    change, change_manifest, message = FORGERIES[case]
    with fakehost.activated("reforge"):
        host, unet = _detected(), tf.make_patcher("reforge")
        save(host, unet, store, name="lean", profile="lean")
        file = faultkit.forge_first_slot(store, "lean", change, change_manifest)
        with pytest.raises(RefDropError, match=rf"reference 'lean' is corrupt: {file} .*{message}"):
            use(host, unet, store, 0.5, name="lean", seed=5)


def test_positions_for_another_head_size_are_refused_by_the_projection():
    block = tf.Flux(seed=1).double_blocks[0]
    x, positions = torch.randn(IMAGE_TOKENS, tf.HIDDEN), torch.zeros(IMAGE_TOKENS, 4, 2, 2)
    with pytest.raises(RefDropError, match="heads of 8 channels, the current model's are 16: it was saved with a "
                                           "model of another architecture"):
        double_image_kv(block, x, positions, FluxOps(joint_attention=None))
