"""One WebUI generation on a tiny DiT model (``tinyflux``, ``tinychroma``, ``tinyqwen``, ``tinywan``) through the
detected fake host: RefDrop's patches for the pass installed on a clone of the model's patcher as the script installs
them, then sampled; and a model call opened around its blocks, for calling them one by one."""

from __future__ import annotations

import pytest
import torch

from lib_refdrop.dit.guide import FluxRefDrop
from lib_refdrop.params import build
from lib_refdrop.run import RefDropRun
from tests.support import fakehost
from tests.support import tinyflux as tf
from tests.support.hostsim import sdpa_attention


def install_pass(host, p, run):
    """What the script does for a pass: the run's patches, installed by the detected host on a clone."""
    host.install(p, host.pass_patches(p, run))


def run_pass(host, unet, values: dict, store, **sample_args):
    """One generation: the run's patches installed on a clone of ``unet``, sampled; the run and p."""
    run = RefDropRun(build({"enabled": True, **values}), store)
    p = tf.make_p(unet)
    install_pass(host, p, run)
    out = tf.sample(p.sd_model.forge_objects.unet, **sample_args)
    return out, run, p


def save(host, unet, store, name="fox", profile="exact", **sample_args):
    """A Save with the exact profile (the tests compare Use with it; a DiT Save with the default uses compact)."""
    out, run, _ = run_pass(host, unet, {"mode": "Save", "save_name": name, "profile": profile}, store, **sample_args)
    run.finish_save({"seed": sample_args.get("seed", 1)}, None)
    assert run.writer.wait(60) and run.writer.status.state == "saved", run.writer.status.message
    return out


def use(host, unet, store, rfg, name="fox", **sample_args):
    out, run, p = run_pass(host, unet, {"mode": "Use", "reference": name, "rfg": rfg}, store, **sample_args)
    run.release()
    return out, p


class model_call:
    """A model call in progress for ``dit`` (a ``FluxRefDrop``: what its model function wrapper opens around
    ``apply_model``), for calling its blocks directly; ``text_tokens``: what the double blocks of the call would have
    noted for the single ones; ``clip_tokens``: the CLIP-vision tokens of the call's ``clip_fea`` (Wan)."""

    def __init__(self, dit, options: dict, text_tokens: int | None = None, clip_tokens: int | None = None):
        self.dit, self.options, self.text_tokens, self.clip_tokens = dit, options, text_tokens, clip_tokens

    def __enter__(self):
        self.dit._calls.append(self.options)
        self.dit._text_tokens.append(self.text_tokens)
        self.dit._clip_tokens.append(self.clip_tokens)

    def __exit__(self, *exc):
        self.dit._calls.pop()
        self.dit._text_tokens.pop()
        self.dit._clip_tokens.pop()


def blending_blocks(ops, rfg: float = 0.5, seed: int = 9):
    """A ``FluxRefDrop`` whose patch does what a Use does with one random reference (20 tokens) at ``rfg``, on the
    hosts' stand-in kernel; ``ops``: the ops its blocks are computed with."""
    g = torch.Generator().manual_seed(seed)
    ref_k, ref_v = torch.randn(1, 20, tf.HIDDEN, generator=g), torch.randn(1, 20, tf.HIDDEN, generator=g)

    def use_like(q, k, v, extra_options):
        own = dit.inner(q, k, v, extra_options)
        ref = dit.attention(q, ref_k.expand(q.shape[0], -1, -1), ref_v.expand(q.shape[0], -1, -1), extra_options)
        return torch.lerp(own, ref, rfg)

    dit = FluxRefDrop(use_like, lambda q, k, v, eo: sdpa_attention(q, k, v, eo["n_heads"]), ops)
    return dit


def dit_host(conventions: dict[str, str]):
    """A ``host`` fixture, once per fake host flavour of ``conventions`` (flavour -> the convention of the model it
    runs): (the detected fake host, that convention)."""

    @pytest.fixture(params=sorted(conventions))
    def host(request):
        with fakehost.activated(request.param):
            from lib_refdrop.webui import hosts

            yield hosts.detect(), conventions[request.param]

    return host
