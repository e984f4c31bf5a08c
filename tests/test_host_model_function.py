"""The model function wrapper the host adapters install (lib_refdrop/patcher/chain.py, install.py):
on the pass's clone only, inside a wrapper registered earlier, the host's own call untouched, and the calls the
engine makes itself completed with the keys each host derives per call."""

from __future__ import annotations

import copy

import pytest
import torch

from lib_refdrop.patcher.chain import install_model_function
from lib_refdrop.run import PassPatches
from lib_refdrop.webui.hosts.forge import with_cond_marks
from lib_refdrop.webui.hosts.host import Host
from lib_refdrop.webui.hosts.reforge import REFERENCE_PASS_UUID, with_chunk_uuids
from tests.support import fakehost
from tests.support.fakehost.objects import FakeUnetPatcher, make_model, make_p, sample_patched

MARK = "refdrop_reference_pass"


def host_args(rows_per_chunk=2, chunks=(1, 0)):
    """The wrapper's ``args`` as both hosts build them for one batched call."""
    sigmas = torch.full((rows_per_chunk,), 3.5)
    options = {"cond_or_uncond": list(chunks), "sigmas": sigmas, "custom": "kept"}
    rows = rows_per_chunk * len(chunks)
    c = {"c_crossattn": torch.zeros(rows, 77, 8), "transformer_options": options}
    return {"input": torch.randn(rows, 4, 8, 8), "timestep": torch.full((rows,), 3.5), "c": c,
            "cond_or_uncond": list(chunks)}


def recording_apply_model(calls):
    def apply_model(x, t, **c):
        calls.append({"x": x, "t": t, "c": c})
        return x * 0.5
    return apply_model


def reference_pass_engine(x_ref):
    """An engine wrapper in the brief's convention: one extra 1-row call, then the real one."""
    def engine(apply_model, args):
        sigma = args["timestep"][:1]
        options = {**args["c"]["transformer_options"], "cond_or_uncond": [0], "sigmas": sigma, MARK: "img"}
        apply_model(x_ref, sigma, c_crossattn=torch.ones(1, 77, 8), transformer_options=options)
        return apply_model(args["input"], args["timestep"], **args["c"])
    return engine


def fake_host(complete=lambda options: options):
    return Host(name="fake", attention=None, flux_ops=None, schedule_attribute="predictor",
                error_message_key="errors", complete_extra_call=complete)


def test_install_puts_patch_and_wrapper_on_a_clone_only():
    unet = FakeUnetPatcher(make_model("forge"))
    p = make_p(unet)
    before = copy.deepcopy(unet.model_options)

    def patch(q, k, v, extra_options):
        return q

    fake_host().install(p, PassPatches(patch, model_wrapper=reference_pass_engine(torch.zeros(1, 4, 8, 8))))
    patched = p.sd_model.forge_objects.unet
    assert patched is not unet
    assert unet.model_options == before and "model_function_wrapper" not in unet.model_options
    assert callable(patched.model_options["model_function_wrapper"])
    assert set(patched.attn1_patches().values()) == {patch}


def test_install_without_wrapper_sets_none_and_without_anything_leaves_the_unet():
    unet = FakeUnetPatcher(make_model("forge"))
    p = make_p(unet)
    fake_host().install(p, PassPatches())
    assert p.sd_model.forge_objects.unet is unet

    fake_host().install(p, PassPatches(lambda q, k, v, extra_options: q))
    assert "model_function_wrapper" not in p.sd_model.forge_objects.unet.model_options


def test_the_engine_sees_the_hosts_call_and_its_own_call_goes_through():
    calls = []
    x_ref = torch.randn(1, 4, 8, 8)
    unet = FakeUnetPatcher(make_model("forge"))
    install_model_function(unet, reference_pass_engine(x_ref))
    args = host_args()
    out = unet.model_options["model_function_wrapper"](recording_apply_model(calls), args)
    assert len(calls) == 2
    extra, real = calls
    assert extra["x"] is x_ref and extra["c"]["transformer_options"][MARK] == "img"
    assert extra["c"]["transformer_options"]["cond_or_uncond"] == [0]
    assert real["c"]["transformer_options"] is args["c"]["transformer_options"]  # the host's own, untouched
    assert torch.equal(out, args["input"] * 0.5)


def test_an_earlier_wrapper_stays_outside_and_still_runs_for_the_real_call():
    calls, seen_by_earlier = [], []

    def earlier(apply_model, args):
        seen_by_earlier.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"]) + 100.0

    unet = FakeUnetPatcher(make_model("forge"))
    unet.set_model_unet_function_wrapper(earlier)
    clone = unet.clone()
    install_model_function(clone, reference_pass_engine(torch.zeros(1, 4, 8, 8)))
    args = host_args()
    out = clone.model_options["model_function_wrapper"](recording_apply_model(calls), args)

    assert unet.model_options["model_function_wrapper"] is earlier  # the patcher it was cloned from
    assert seen_by_earlier == [4]                                    # once, for the host's call only
    assert [call["x"].shape[0] for call in calls] == [1, 4]          # the reference pass, then the real call
    assert torch.equal(out, args["input"] * 0.5 + 100.0)             # the earlier wrapper's result


def test_an_earlier_wrapper_that_calls_the_model_twice_gets_the_pass_before_each_call():
    calls = []

    def tiled(apply_model, args):
        x = args["input"]
        halves = [apply_model(part, args["timestep"], **args["c"]) for part in x.split(4, dim=-1)]
        return torch.cat(halves, dim=-1)

    unet = FakeUnetPatcher(make_model("forge"))
    unet.set_model_unet_function_wrapper(tiled)
    install_model_function(unet, reference_pass_engine(torch.zeros(1, 4, 8, 8)))
    unet.model_options["model_function_wrapper"](recording_apply_model(calls), host_args())
    assert [tuple(call["x"].shape) for call in calls] == [(1, 4, 8, 8), (4, 4, 8, 4), (1, 4, 8, 8), (4, 4, 8, 4)]


def test_the_chain_forwards_to_and_survives_clone_by_reference():
    class Movable:
        def __init__(self, where="cpu"):
            self.where = where

        def __call__(self, apply_model, args):
            return apply_model(args["input"], args["timestep"], **args["c"])

        def to(self, where):
            return Movable(where)

    state = {"calls": 0}

    def engine(apply_model, args):
        state["calls"] += 1
        return apply_model(args["input"], args["timestep"], **args["c"])

    unet = FakeUnetPatcher(make_model("forge"))
    unet.set_model_unet_function_wrapper(Movable())
    install_model_function(unet, engine)
    unet.model_patches_to("cuda:7")
    wrapper = unet.model_options["model_function_wrapper"]
    assert hasattr(wrapper, "to")
    clone = unet.clone()  # model_options deep-copied: the closure, and so the engine's state, kept by reference
    clone.model_options["model_function_wrapper"](recording_apply_model([]), host_args())
    assert clone.model_options["model_function_wrapper"] is wrapper and state["calls"] == 1


def test_forge_completion_matches_forges_row_layout():
    options = {"cond_or_uncond": [1, 0], "sigmas": torch.tensor([2.0, 2.0]), "cond_mark": "stale"}
    done = with_cond_marks(options)
    assert done["cond_mark"].tolist() == [1.0, 1.0, 0.0, 0.0] and done["cond_mark"].dtype == torch.float32
    assert done["cond_indices"] == [2, 3] and done["uncond_indices"] == [0, 1]
    assert options["cond_mark"] == "stale"  # a new dict: the host's own options are never changed
    one = with_cond_marks({"cond_or_uncond": [0], "sigmas": torch.tensor([5.0])})
    assert one["cond_mark"].tolist() == [0.0] and one["cond_indices"] == [0] and one["uncond_indices"] == []


def test_reforge_completion_gives_one_uuid_per_chunk():
    done = with_chunk_uuids({"cond_or_uncond": [0], "uuids": ["a", "b"]})
    assert done["uuids"] == [REFERENCE_PASS_UUID]
    assert with_chunk_uuids({"cond_or_uncond": [0]}) == {"cond_or_uncond": [0]}


@pytest.mark.parametrize("flavour", ["forge", "reforge"])
def test_each_host_completes_the_engines_call_and_not_its_own(flavour):
    from lib_refdrop.webui import hosts

    with fakehost.activated(flavour):
        host = hosts.detect()
        calls = []
        unet = FakeUnetPatcher(make_model(flavour))
        p = make_p(unet)
        host.install(p, PassPatches(model_wrapper=reference_pass_engine(torch.zeros(1, 4, 8, 8))))
        args = host_args()
        args["c"]["transformer_options"].update(
            {"cond_mark": torch.tensor([1.0, 1.0, 0.0, 0.0]), "cond_indices": [2, 3], "uncond_indices": [0, 1]}
            if flavour == "forge" else {"uuids": ["uncond-id", "cond-id"]})
        p.sd_model.forge_objects.unet.model_options["model_function_wrapper"](recording_apply_model(calls), args)
    extra, real = (call["c"]["transformer_options"] for call in calls)
    assert real is args["c"]["transformer_options"]
    if flavour == "forge":
        assert extra["cond_mark"].tolist() == [0.0] and extra["cond_indices"] == [0] and extra["uncond_indices"] == []
    else:
        assert extra["uuids"] == [REFERENCE_PASS_UUID] and real["uuids"] == ["uncond-id", "cond-id"]
    assert extra["custom"] == "kept" and extra[MARK] == "img"


def test_an_extra_call_reaches_the_attn1_patch_with_its_own_keys():
    """Through a hostsim U-Net sampled with the patcher's patch and wrapper, as the hosts run them."""
    from tests.support.hostsim import make_unet

    seen = []

    def patch(q, k, v, extra_options):
        seen.append((extra_options.get(MARK), list(extra_options["cond_or_uncond"]),
                     extra_options["sigmas"].tolist(), q.shape[0]))
        return torch.nn.functional.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]

    def engine(apply_model, args):
        sigma = args["timestep"].reshape(-1)[:1]
        options = {**args["c"]["transformer_options"], "cond_or_uncond": [0], "sigmas": sigma, MARK: "img"}
        context = args["c"]["c_crossattn"][:1]
        apply_model(torch.zeros_like(args["input"][:1]), sigma, c_crossattn=context, transformer_options=options)
        return apply_model(args["input"], args["timestep"], **args["c"])

    unet = FakeUnetPatcher(make_model("forge", make_unet("sd15", "tiny")))
    p = make_p(unet)
    fake_host().install(p, PassPatches(patch, model_wrapper=engine))
    sample_patched(p.sd_model.forge_objects.unet, steps=1, height=8, width=8, seed=1)
    marked = [entry for entry in seen if entry[0] == "img"]
    plain = [entry for entry in seen if entry[0] is None]
    assert marked and plain
    assert all(chunks == [0] and rows == 1 and len(sigmas) == 1 for _, chunks, sigmas, rows in marked)
    assert {tuple(sigmas) for _, _, sigmas, _ in marked} == {tuple(plain[0][2][:1])}
