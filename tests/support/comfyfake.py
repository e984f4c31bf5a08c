"""A fake ComfyUI for the node pack's tests: a ``ModelPatcher`` and a KSampler run that replay a recorded ComfyUI
trace (shared/host-traces/comfyui) through the same hooks the real one calls (ComfyUI 0.3.64, read from its source):

- ``FakePatcher``: ``clone()`` (``model_options`` nested dicts copied, wrappers copied), ``add_wrapper_with_key``,
  ``set_model_attn1_replace``, ``get_model_object("model_sampling")``, ``model.model_config`` (a class named like
  ComfyUI's ``SD15``/``SDXL``), ``model.diffusion_model`` with ``input_blocks``/``middle_block``/``output_blocks`` ->
  ``transformer_blocks[i].attn1`` (``to_q``/``to_k``/``to_v`` linear layers) at the trace's keys and widths,
  ``process_latent_in``, ``extra_conds``;
- ``sample(patcher, trace)``: per recorded sampling run (``pass``), what ``CFGGuider.sample`` does: a copy of the
  patcher's ``model_options`` (``copy_nested_dicts``), the run's conds with their uuids, the ``OUTER_SAMPLE``
  wrappers called as ``wrapper(executor, noise, latent_image, sampler, sigmas, denoise_mask, callback,
  disable_pbar, seed)`` with ``executor.class_obj`` the guider; inside, each recorded U-Net forward through
  ``model_function_wrapper`` (if set) with ``{"input", "timestep", "c", "cond_or_uncond"}``, and each attn1 row as
  ``BasicTransformerBlock.forward`` runs it: the ``attn1_patch`` list on ``(n, n, n, extra_options)``, then the
  projections, then the replace patch looked up by ``(block, number, index)``, then ``(block, number)``, else the
  kernel. ``extra_options`` carry the recorded keys (``sample_sigmas``, ``uuids``, ``wrappers``, ``callbacks`` ...).

The layers are ``NARROW`` times narrower than the recorded ones (same heads, tokens and rows). A layer's input is a
seeded function of the forward's latent, so two runs of one trace see the same inputs: a Use at
the Save's own settings reproduces plain outputs bit for bit, as in the real host.
"""

from __future__ import annotations

import math
import zlib

import torch

from .hostsim.host import sdpa_attention
from .hostsim.traces import extra_options_of, split_forwards

OUTER_SAMPLE = "outer_sample"
NARROW = 8  # the fake layers are this many times narrower than the recorded ones (same heads and tokens): fast


def copy_nested_dicts(value):
    if isinstance(value, dict):
        return {k: copy_nested_dicts(v) for k, v in value.items()}
    return value


def kernel(q, k, v, extra_options):
    return sdpa_attention(q, k, v, extra_options["n_heads"])


class _Attn1(torch.nn.Module):
    def __init__(self, width: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(width, width, bias=False) for _ in range(3))
        with torch.no_grad():
            for layer in (self.to_q, self.to_k, self.to_v):
                layer.weight.copy_(torch.randn(width, width, generator=gen) / math.sqrt(width))


class _Block(torch.nn.Module):
    def __init__(self, attn1):
        super().__init__()
        self.attn1 = attn1


class _Transformer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList()


class FakeUNet(torch.nn.Module):
    """Just the attn1 layers of the trace, at their keys."""

    def __init__(self, layers: list[dict]):
        super().__init__()
        n_in = max((l_["block"][1] for l_ in layers if l_["block"][0] == "input"), default=-1) + 1
        n_out = max((l_["block"][1] for l_ in layers if l_["block"][0] == "output"), default=-1) + 1
        self.input_blocks = torch.nn.ModuleList(torch.nn.ModuleList() for _ in range(n_in))
        self.output_blocks = torch.nn.ModuleList(torch.nn.ModuleList() for _ in range(n_out))
        self.middle_block = torch.nn.ModuleList()
        self.layers = {}
        for i, layer in enumerate(layers):
            name, number = layer["block"]
            seq = self.middle_block if name == "middle" else getattr(self, f"{name}_blocks")[number]
            if not len(seq):
                seq.append(_Transformer())
            transformer = seq[0]
            while len(transformer.transformer_blocks) <= layer["block_index"]:
                transformer.transformer_blocks.append(_Block(_Attn1(layer["width"], 1000 + i)))
            self.layers[(name, number, layer["block_index"])] = transformer.transformer_blocks[layer["block_index"]]


class FakeSchedule:
    """``percent_to_sigma`` of the recorded run: the recorded points, linear in between."""

    def __init__(self, points: dict):
        self.points = sorted((float(p), s) for p, s in points.items())

    def percent_to_sigma(self, percent: float) -> float:
        for (p0, s0), (p1, s1) in zip(self.points, self.points[1:], strict=False):
            if p0 <= percent <= p1:
                return s0 if p1 == p0 else s0 + (s1 - s0) * (percent - p0) / (p1 - p0)
        return self.points[-1][1]


class _Cond:
    def __init__(self, cond):
        self.cond = cond


class FakeBaseModel:
    def __init__(self, config_name: str, unet: FakeUNet, schedule: FakeSchedule):
        self.model_config = type(config_name, (), {})()
        self.diffusion_model = unet
        self.model_sampling = schedule

    def process_latent_in(self, latent):
        return latent * 0.18215

    def extra_conds(self, cross_attn=None, **kwargs):
        return {"c_crossattn": _Cond(cross_attn)}


class FakePatcher:
    def __init__(self, model: FakeBaseModel):
        self.model = model
        self.model_options = {"transformer_options": {}}
        self.wrappers: dict = {}
        self.load_device = torch.device("cpu")

    def clone(self):
        n = FakePatcher(self.model)
        n.model_options = copy_nested_dicts(self.model_options)
        n.wrappers = {t: {k: list(v) for k, v in keyed.items()} for t, keyed in self.wrappers.items()}
        return n

    def add_wrapper_with_key(self, wrapper_type, key, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        to = self.model_options["transformer_options"]
        replace = to.setdefault("patches_replace", {}).setdefault("attn1", {})
        replace[(block_name, number) if transformer_index is None else (block_name, number, transformer_index)] = patch

    def get_model_object(self, name):
        return getattr(self.model, name)


class FakeVAE:
    def encode(self, pixels):
        x = pixels.movedim(-1, 1)
        x = torch.nn.functional.avg_pool2d(x, 8)
        return torch.cat([x, x.mean(1, keepdim=True)], dim=1)


def layers_of(trace: dict) -> list[dict]:
    first = split_forwards(trace["calls"])[0]
    return [{"block": tuple(c["block"]), "block_index": c["block_index"], "width": c["q"][-1] // NARROW,
             "tokens": c["q"][1]} for c in first]


def patcher_for(trace: dict, config: str = "SD15") -> FakePatcher:
    outer = next(e for e in trace["events"] if e["event"] == "outer_sample")
    unet = FakeUNet(layers_of(trace))
    return FakePatcher(FakeBaseModel(config, unet, FakeSchedule(outer["percent_to_sigma"])))


class _Executor:
    def __init__(self, wrappers, inner, guider):
        self.wrappers, self.inner, self.class_obj = wrappers, inner, guider

    def __call__(self, *args, **kwargs):
        if not self.wrappers:
            return self.inner(*args, **kwargs)
        first, rest = self.wrappers[0], _Executor(self.wrappers[1:], self.inner, self.class_obj)
        return first(rest, *args, **kwargs)


class FakeSampler:
    sampler_function = staticmethod(lambda: None)
    sampler_function.__name__ = "sample_euler"


class Guider:
    def __init__(self, patcher, model_options, conds, cfg):
        self.model_patcher, self.model_options, self.conds, self.cfg = patcher, model_options, conds, cfg


def _tensor(spec):
    return torch.tensor(spec["values"], dtype=torch.float32).reshape(spec["tensor"])


def sample(patcher: FakePatcher, trace: dict, seed: int = 0, kernel_fn=kernel) -> list[torch.Tensor]:
    """Every attn1 output of the trace's runs, in order (the "image" the tests compare)."""
    outs: list[torch.Tensor] = []
    runs = [e for e in trace["events"] if e["event"] == "outer_sample"]
    forwards = split_forwards(trace["calls"])
    model_calls = trace.get("model_calls") or [None] * len(forwards)
    layers = patcher.model.diffusion_model.layers
    for run in runs:
        model_options = copy_nested_dicts(patcher.model_options)
        conds = {kind: [{"uuid": c["uuid"]} for c in run["conds"][kind]] for kind in ("positive", "negative")}
        guider = Guider(patcher, model_options, conds, run.get("cfg"))
        sigmas = _tensor(run["sigmas"])
        latent = torch.zeros(run["latent_image"]["tensor"])
        mine = [(f, mc) for f, mc in zip(forwards, model_calls, strict=True) if f[0]["pass"] == run["run"]]

        def outer(noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                  seed=None, _mine=mine, _guider=guider):
            for index, (rows, _model_call) in enumerate(_mine):
                options = _guider.model_options
                first = extra_options_of(rows[0])
                to = {**options.get("transformer_options", {}), "cond_or_uncond": first["cond_or_uncond"],
                      "uuids": first["uuids"], "sigmas": first["sigmas"], "sample_sigmas": sigmas}
                n_rows = rows[0]["q"][0]
                x = _latent(n_rows, latent_image, index, seed)
                timestep = first["sigmas"].reshape(-1)[:1].repeat(n_rows)
                c = {"c_crossattn": torch.zeros(n_rows, 77, 768), "transformer_options": to}
                args = {"input": x, "timestep": timestep, "c": c, "cond_or_uncond": first["cond_or_uncond"]}

                def apply_model(x_, t_, _rows=rows, **c_):
                    return _forward(x_, c_["transformer_options"], _rows, layers, outs, kernel_fn)

                wrapper = options.get("model_function_wrapper")
                if wrapper is not None:
                    wrapper(apply_model, args)
                else:
                    apply_model(x, timestep, **c)
            return latent_image

        wrappers = [w for ws in patcher.wrappers.get(OUTER_SAMPLE, {}).values() for w in ws]
        _Executor(wrappers, outer, guider)(torch.zeros_like(latent), latent, FakeSampler(), sigmas, None, None,
                                           False, run["seed"] + seed)
    return outs


def _latent(rows, latent_image, index, seed):
    gen = torch.Generator().manual_seed(7919 * (index + 1) + int(seed or 0))
    return torch.randn((rows, *latent_image.shape[1:]), generator=gen)


@torch.no_grad()
def _forward(x, to, rows, layers, outs, kernel_fn):
    """One U-Net forward: the recorded rows' layers (a reference pass has its own row count)."""
    chunks = len(to["cond_or_uncond"])
    for call in rows:
        key = (call["block"][0], call["block"][1], call["block_index"])
        extra = {**extra_options_of(call), **{k: v for k, v in to.items() if k not in ("patches", "patches_replace")}}
        extra.pop("key", None)
        extra.pop("attn1_patch", None)
        block = layers[key]
        width, tokens = call["q"][-1] // NARROW, call["q"][1]
        extra["dim_head"] = width // extra["n_heads"]
        gen = torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))
        base = torch.randn(1, tokens, width, generator=gen)
        per_row = x.reshape(x.shape[0], -1).mean(1).reshape(-1, 1, 1)
        n = base + per_row.to(base.dtype)
        assert n.shape[0] == x.shape[0] and x.shape[0] % chunks == 0
        patches = to.get("patches", {})
        context = value = n
        for patch in patches.get("attn1_patch", []):
            n, context, value = patch(n, context, value, extra)
        q, k, v = block.attn1.to_q(n), block.attn1.to_k(context), block.attn1.to_v(value)
        replace = to.get("patches_replace", {}).get("attn1", {})
        patch = replace.get(key) or replace.get(key[:2])
        out = patch(q, k, v, extra) if patch is not None else kernel_fn(q, k, v, extra)
        outs.append(out.detach())
    return x
