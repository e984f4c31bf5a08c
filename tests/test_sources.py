"""Reference sources beyond a stored reference, on the trained toy model driven like the hosts drive a U-Net
(attn1 replace patch + model function wrapper, tests/support/hostsim): exact reductions, bit for bit where the
issue asks for it.

- the batch's first image: c = 0 is plain; image 0 is plain; batch count 2 equals a Save of batch 1's image and a
  Use of it in batch 2;
- several references (eq. 7): a slot at c with the others at 0 is the single reference; two copies at c1 + c2 = c
  are one reference at c;
- masks: all ones is no mask, all zeros is plain;
- images: a Save from an image leaves its generation plain; the baked and the live image guide alike.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from devmodel.pipeline import Pipeline, to_pil
from devmodel.sampling import SCHEDULE
from devmodel.toy import MODEL
from devmodel.toy.data import SIZE
from lib_refdrop.errors import RefDropError
from lib_refdrop.reference.store import ReferenceStore

SHAPES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load(MODEL)


@pytest.fixture(scope="module")
def store(tmp_path_factory, pipe):
    store = ReferenceStore(tmp_path_factory.mktemp("sources"))
    pipe.save_reference(store, "red", "square", seed=10_001)
    pipe.save_reference(store, "blue", "circle", seed=10_000)
    return store


def mask_of(value: int) -> Image.Image:
    return Image.fromarray(np.full((SIZE, SIZE), value, dtype=np.uint8), mode="L")


def test_batch_reference_at_c0_is_plain(pipe, store):
    plain = pipe.generate(SHAPES, [1, 2, 3])
    guided, = pipe.generate_with(store, [(SHAPES, [1, 2, 3])], source="batch", rfg=0.0, reference="")
    assert torch.equal(guided, plain)


def test_batch_reference_keeps_image_0_plain_and_moves_the_others(pipe, store):
    shapes = ["circle"] * 3
    plain = pipe.generate(shapes, [1, 2, 3])
    guided, = pipe.generate_with(store, [(shapes, [1, 2, 3])], source="batch", rfg=0.6)
    assert torch.equal(guided[0], plain[0])
    for i in (1, 2):
        assert not torch.equal(guided[i], plain[i])
        # toward image 0: closer to it than the plain image was
        assert (guided[i] - guided[0]).abs().mean() < (plain[i] - plain[0]).abs().mean()


def test_batch_count_2_equals_a_save_of_the_first_image_and_a_use_of_it(pipe, store, tmp_path):
    first, second = pipe.generate_with(store, [(["square"], [7]), (["circle", "triangle"], [8, 9])],
                                       source="batch", rfg=0.4)
    assert torch.equal(first, pipe.generate(["square"], [7]))
    own_store = ReferenceStore(tmp_path)
    saved = pipe.save_reference(own_store, "first", "square", seed=7)
    assert torch.equal(saved, first[0])
    used = pipe.use_reference(own_store, "first", 0.4, ["circle", "triangle"], [8, 9])
    assert torch.equal(second, used)


def test_a_slot_at_c_with_the_others_at_0_is_the_single_reference(pipe, store):
    single = pipe.use_reference(store, "red", 0.4, SHAPES, [1, 2, 3])
    with_slot_2_off, = pipe.generate_with(store, [(SHAPES, [1, 2, 3])], reference="red", rfg=0.4,
                                          reference_2="blue", rfg_2=0.0)
    assert torch.equal(with_slot_2_off, single)
    only_slot_2, = pipe.generate_with(store, [(SHAPES, [1, 2, 3])], reference="blue", rfg=0.0,
                                      reference_2="red", rfg_2=0.4)
    assert torch.equal(only_slot_2, single)
    only_slot_3, = pipe.generate_with(store, [(SHAPES, [1, 2, 3])], reference="blue", rfg=0.0,
                                      reference_3="red", rfg_3=0.4)
    assert torch.equal(only_slot_3, single)


def test_two_copies_at_c1_plus_c2_are_one_reference_at_c(pipe, store):
    single = pipe.use_reference(store, "red", 0.5, SHAPES, [1, 2, 3])
    split, = pipe.generate_with(store, [(SHAPES, [1, 2, 3])], reference="red", rfg=0.2, reference_2="red",
                                rfg_2=0.3)
    plain = pipe.generate(SHAPES, [1, 2, 3])
    assert (split - single).abs().max() < 1e-4 < (single - plain).abs().max()


def test_two_different_references_both_count(pipe, store):
    red = pipe.use_reference(store, "red", 0.3, SHAPES, [1, 2, 3])
    both, = pipe.generate_with(store, [(SHAPES, [1, 2, 3])], reference="red", rfg=0.3, reference_2="blue",
                               rfg_2=0.3)
    assert (both - red).abs().max() > 1e-3


def test_an_all_ones_mask_is_no_mask_and_all_zeros_is_plain(pipe, store):
    unmasked = pipe.use_reference(store, "red", 0.5, SHAPES, [1, 2, 3])
    ones, = pipe.generate_with(store, [(SHAPES, [1, 2, 3])], reference="red", rfg=0.5, mask=mask_of(255))
    zeros, = pipe.generate_with(store, [(SHAPES, [1, 2, 3])], reference="red", rfg=0.5, mask=mask_of(0))
    assert torch.equal(ones, unmasked)
    assert torch.equal(zeros, pipe.generate(SHAPES, [1, 2, 3]))


def test_a_half_mask_changes_the_result(pipe, store):
    half = np.zeros((SIZE, SIZE), dtype=np.uint8)
    half[:, : SIZE // 2] = 255
    unmasked = pipe.use_reference(store, "red", 0.5, SHAPES, [1, 2, 3])
    masked, = pipe.generate_with(store, [(SHAPES, [1, 2, 3])], reference="red", rfg=0.5,
                                 mask=Image.fromarray(half, mode="L"))
    assert not torch.equal(masked, unmasked)


def test_a_save_from_an_image_leaves_its_generation_plain(pipe, tmp_path):
    store = ReferenceStore(tmp_path)
    image = to_pil(pipe.generate(["square"], [10_001])[0], scale=1)
    from lib_refdrop.standalone import start_save

    with start_save(store, "baked", pipe.pass_context(4), profile="exact", image=image) as save:
        out = pipe.generate(["circle"], [4], save.patches)
        status = save.finish({"seed": 4})
    assert status.state == "saved"
    assert torch.equal(out, pipe.generate(["circle"], [4]))
    manifest = store.manifest("baked")
    assert manifest["generation"]["source"] == "image"
    assert manifest["chunks"] == ["cond0"]  # one row per sigma, conditioned on the image prompt
    assert len(manifest["slots"]) == pipe.steps


def test_baked_and_live_image_references_agree(pipe, tmp_path):
    store = ReferenceStore(tmp_path)
    image = to_pil(pipe.generate(["square"], [10_001])[0], scale=1)
    pipe.bake_image(store, "baked", image, seed=5)
    baked, = pipe.generate_with(store, [(SHAPES, [5, 6, 7])], reference="baked", rfg=0.6)
    live, = pipe.generate_with(store, [(SHAPES, [5, 6, 7])], source="image", image=image, rfg=0.6)
    plain = pipe.generate(SHAPES, [5, 6, 7])
    assert (baked - live).abs().max() <= 1e-5 < (live - plain).abs().max()


def test_a_live_image_at_c0_is_plain(pipe, store):
    image = to_pil(pipe.generate(["square"], [10_001])[0], scale=1)
    out, = pipe.generate_with(store, [(SHAPES, [1, 2, 3])], source="image", image=image, rfg=0.0)
    assert torch.equal(out, pipe.generate(SHAPES, [1, 2, 3]))


def test_references_of_another_family_in_slot_2_are_refused(pipe, store):
    from lib_refdrop.standalone import start_use
    from tests.support.refdrop_harness import save_synthetic

    save_synthetic(store, "sd15-ref", {"seed": 1})  # saved with an SD1.5 model
    with start_use(store, reference="red", rfg=0.3, reference_2="sd15-ref", rfg_2=0.3) as use:
        with pytest.raises(RefDropError, match="'sd15-ref' was saved with an SD1.5 model"):
            use.for_pass(pipe.pass_context(1))


def test_a_host_that_cannot_evaluate_images_says_so(pipe, store):
    from lib_refdrop.standalone import start_use

    image = to_pil(pipe.generate(["square"], [1])[0], scale=1)
    with start_use(store, source="image", image=image, rfg=0.3) as use:
        with pytest.raises(RefDropError, match="cannot evaluate an image"):
            use.for_pass(pipe.hook.context(MODEL.name, SCHEDULE.percent_to_sigma, 1))  # no image encoder


def test_an_image_reference_on_an_inpainting_model_is_refused():
    from lib_refdrop.attn.refpass import ImageLatent, reference_pass_wrapper

    image = ImageLatent("the image", torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), {})
    wrapper = reference_pass_wrapper([image])
    args = {"input": torch.zeros(2, 4, 2, 2), "timestep": torch.ones(2), "cond_or_uncond": [0],
            "c": {"c_crossattn": torch.zeros(2, 1, 1), "c_concat": torch.zeros(2, 5, 2, 2), "transformer_options": {}}}
    with pytest.raises(RefDropError, match="inpainting"):
        wrapper(lambda *a, **k: torch.zeros(2, 4, 2, 2), args)


def test_a_mask_saved_with_the_reference_is_used_and_one_given_with_the_use_wins(pipe, store, tmp_path):
    import io

    own = ReferenceStore(tmp_path)
    pipe.save_reference(own, "red", "square", seed=10_001)
    unmasked = pipe.use_reference(own, "red", 0.5, SHAPES, [1, 2, 3])
    png = io.BytesIO()
    mask_of(0).save(png, format="PNG")
    own.set_mask("red", png.getvalue())
    assert own.read_mask("red") == png.getvalue()
    stored_zeros = pipe.use_reference(own, "red", 0.5, SHAPES, [1, 2, 3])
    assert torch.equal(stored_zeros, pipe.generate(SHAPES, [1, 2, 3]))  # all zeros: nothing of the reference
    given_ones, = pipe.generate_with(own, [(SHAPES, [1, 2, 3])], reference="red", rfg=0.5, mask=mask_of(255))
    assert torch.equal(given_ones, unmasked)
    own.set_mask("red", None)
    assert own.read_mask("red") is None
    assert torch.equal(pipe.use_reference(own, "red", 0.5, SHAPES, [1, 2, 3]), unmasked)


def test_a_stored_mask_that_is_no_image_is_refused_by_name(pipe, tmp_path):
    own = ReferenceStore(tmp_path)
    pipe.save_reference(own, "red", "square", seed=10_001)
    own.set_mask("red", b"not a png")
    with pytest.raises(RefDropError, match="mask of reference 'red'"):
        pipe.use_reference(own, "red", 0.5, SHAPES, [1, 2, 3])


def test_a_mask_for_a_missing_reference_says_not_found(tmp_path):
    from lib_refdrop.errors import ReferenceNotFound

    with pytest.raises(ReferenceNotFound, match="'nobody'"):
        ReferenceStore(tmp_path).set_mask("nobody", b"")


def test_the_batch_reference_image_keeps_its_own_attention_whatever_the_kernel():
    """Image 0 attends to itself through the reference term too; its rows are its own attention, bit for bit, even
    with a kernel whose result depends on the call (another batch layout, another algorithm)."""
    from lib_refdrop.attn.patches import Guide, UsePlan, make_use_patch
    from lib_refdrop.attn.sources import BatchRows, KeptRows
    from tests.support.hostsim import host_attention

    calls = []

    def drifting_attention(q, k, v, extra_options):  # each call a little off, like another kernel would be
        calls.append(1)
        return host_attention(q, k, v, extra_options) + 1e-3 * len(calls)

    source = BatchRows(KeptRows(), first_batch=True, keep=False)
    patch = make_use_patch([Guide(source, 0.5)], UsePlan(), drifting_attention, host_attention)
    q, k, v = (torch.randn(4, 16, 8) for _ in range(3))
    options = {"block": ("input", 1), "block_index": 0, "cond_or_uncond": [1, 0], "n_heads": 2, "dim_head": 4,
               "sigmas": torch.tensor([1.0, 1.0])}
    out = patch(q, k, v, options)
    own = host_attention(q, k, v, options)
    assert torch.equal(out[[0, 2]], own[[0, 2]])  # image 0 of each chunk
    assert not torch.equal(out[[1, 3]], own[[1, 3]])


def test_use_patch_refuses_a_source_that_needs_a_model_wrapper(pipe, store):
    from lib_refdrop.standalone import use_patch

    image = to_pil(pipe.generate(["square"], [1])[0], scale=1)
    with pytest.raises(RefDropError, match="use start_use"):
        use_patch(store, "", 0.3, pipe.pass_context(1), source="image", image=image)
