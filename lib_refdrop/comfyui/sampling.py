"""One sampling run of a RefDrop node's MODEL: planned, installed and finished in ComfyUI's ``OUTER_SAMPLE`` wrapper.

A node makes a session from its settings (``standalone.save_session`` / ``start_use``: everything that can be
checked without a sampling run is checked there, on the node) and returns ``model.clone()`` with a wrapper
(``add_wrapper_with_key(OUTER_SAMPLE, ...)``). ComfyUI calls it once per sampling run (each KSampler, each pass of a
two-pass graph) as ``wrapper(executor, noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar,
seed)``; ``executor.class_obj`` is the ``CFGGuider``, whose ``model_options`` is this run's own copy
(``create_model_options_clone`` in ``CFGGuider.sample``: nested dicts copied, the original restored after the run).
The wrapper:

1. plans the run with its seed, schedule, latent and model (``session.for_pass``); a problem raises ``RefDropError``
   here, which ComfyUI reports on the sampling node;
2. installs the ``PassPatches`` into the run's ``model_options`` only (``patcher/install.py`` on a view of them): the
   attn1 patch under every attn1 key, chained with what an earlier node registered there (``set_model_attn1_replace``
   alone would replace it: SAG then fails), the input patch appended to ``attn1_patch``, the model function wrapper
   inside any earlier one, a Flux or Chroma model's blocks under ``patches_replace["dit"]``;
3. samples, then finishes: a Save waits until its reference is on disk (its failure is this run's error), a Use
   closes its references. Nothing outlives the run: the patcher, the node's MODEL and the process are unchanged.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import families, standalone
from ..attn.refpass import PASS_KEY
from ..dit.layers import layer_widths_of as dit_layer_widths_of
from ..dit.layers import projections_of as dit_projections_of
from ..patcher import dit_blocks
from ..patcher.chain import chain, earlier_attn1_patches
from ..patcher.install import install
from ..patcher.unet_layers import layer_widths_of, projections_of
from ..run import PassPatches
from . import model as host
from .chunks import ChunkNames, chained_inner, run_uuids
from .images import encoders

OUTER_SAMPLE = "outer_sample"  # comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
WRAPPER_KEY = "refdrop"
# stands for the reference pass's rows in ``uuids``, where ComfyUI puts one uuid per chunk (of the cond it came from)
REFERENCE_PASS_UUID = uuid.uuid5(uuid.NAMESPACE_URL, "refdrop:reference-pass")
_ARGS = ("noise", "latent_image", "sampler", "sigmas", "denoise_mask", "callback", "disable_pbar", "seed")


@dataclass(frozen=True)
class HostKernels:
    """ComfyUI's kernels (``model.py``); the tests give their own."""

    attention: Callable
    flux_ops: Callable[[], object]
    wan_ops: Callable[[], object] = host.wan_ops

    @staticmethod
    def of_comfyui() -> HostKernels:
        return HostKernels(attention=host.host_attention(), flux_ops=host.flux_ops, wan_ops=host.wan_ops)


@dataclass
class RunSpec:
    """What a node decided; the wrapper plans ``session`` for each sampling run."""

    session: object                        # standalone.SaveSession or UseSession
    vae: object = None                     # image sources: ComfyUI VAE
    conditioning: object = None            # image sources: ComfyUI CONDITIONING
    save_window: tuple[float, float] | None = None  # a Save's step window (fractions)
    kernels: HostKernels | None = None

    @property
    def saving(self) -> bool:
        return isinstance(self.session, standalone.SaveSession)


def add_to(patcher, spec: RunSpec):
    """A clone of ``patcher`` with the run wrapper for ``spec``; ``patcher`` itself is unchanged."""
    clone = patcher.clone()
    clone.add_wrapper_with_key(OUTER_SAMPLE, WRAPPER_KEY, outer_sample_wrapper(spec))
    return clone


def outer_sample_wrapper(spec: RunSpec) -> Callable:
    def refdrop_outer_sample(executor, *args, **kwargs):
        values = dict(zip(_ARGS, args, strict=False)) | kwargs
        return SamplingRun(spec, executor.class_obj, values).run(lambda: executor(*args, **kwargs))

    return refdrop_outer_sample


class SamplingRun:
    def __init__(self, spec: RunSpec, guider, args: dict):
        self.spec, self.guider, self.args = spec, guider, args
        self.patcher = guider.model_patcher
        self.kernels = spec.kernels or HostKernels.of_comfyui()

    def run(self, sample: Callable):
        session = self.spec.session
        first_save = self.spec.saving and session.patches.empty
        try:
            ctx = self.context()
            patches = session.for_pass(ctx)  # a Save's later runs (a second KSampler) come back empty: plain
            self.install(patches, ctx.inner)
            out = sample()
        except BaseException as exc:
            if self.spec.saving:
                session.abort(f"the sampling failed ({type(exc).__name__})")
            else:
                session.close(generation_finished=False)  # keeps nothing a trajectory's first Use began baking
            raise
        if first_save and not patches.empty:
            session.finish(self.generation())  # waits until the reference is on disk; RefDropError if it is not
        elif not self.spec.saving:
            session.close()
        return out

    # -- planning ---------------------------------------------------------------------------------------------

    def context(self):
        patcher, options = self.patcher, self.guider.model_options
        attention = self.kernels.attention
        earlier = chained_inner(chain(earlier_attn1_patches(_Options(patcher, options)), attention))
        extra, family = {}, host.family_of(patcher)
        if family in families.DIT_FAMILIES:
            host.check_flux_blocks(patcher)
            self.layers = None
            model = dit_blocks.diffusion_model(patcher)
            ops = dit_blocks.host_block_ops(model, self.kernels.flux_ops, self.kernels.wan_ops)
            extra = {"dit_ops": ops, "projections": dit_projections_of(model, ops),
                     "earlier_blocks": tuple(dit_blocks.earlier_block_patches(_Options(patcher, options))),
                     "layer_widths": dit_layer_widths_of(model)}
        else:
            self.layers = host.unet_keys(patcher)
            extra = {"projections": projections_of(patcher), "layer_widths": layer_widths_of(patcher)}
        latent, seed = self.args["latent_image"], self.args.get("seed")
        if torch.is_tensor(latent) and latent.ndim == 4:  # the images' aspect, for a mask of the batch's first image
            extra["size"] = (int(latent.shape[-1]) * 8, int(latent.shape[-2]) * 8)
        return standalone.context(
            family, attention, host.percent_to_sigma(patcher), seed, earlier=earlier,
            **encoders(patcher, self.spec.vae, self.spec.conditioning, latent, seed), **extra)

    # -- installing into this run's model_options ------------------------------------------------------------

    def install(self, patches: PassPatches, inner: Callable) -> None:
        if patches.empty:
            return  # c = 0 and the like: a plain run, exactly
        names = ChunkNames(*run_uuids(getattr(self.guider, "conds", None) or {}))
        window = self.spec.save_window if self.spec.saving else None
        to_sigma = host.percent_to_sigma(self.patcher)
        if patches.blocks is not None:  # a DiT: RefDrop's patch runs inside every block's joint attention
            blocks = patches.blocks
            blocks.patch = names.attn1(_windowed(blocks.patch, window, to_sigma, blocks.inner))
            if blocks.input_patch is not None:  # a Save that keeps each block's input
                blocks.input_patch = names.attn1_input(_windowed_input(blocks.input_patch, window, to_sigma))
        patches = dataclasses.replace(
            patches,
            attn1=patches.attn1 and names.attn1(_windowed(patches.attn1, window, to_sigma, inner)),
            attn1_input=patches.attn1_input and names.attn1_input(_windowed_input(patches.attn1_input, window,
                                                                                   to_sigma)),
            model_wrapper=patches.model_wrapper and names.model_wrapper(patches.model_wrapper))
        install(_Options(self.patcher, self.guider.model_options), patches, with_chunk_uuids, layers=self.layers)

    # -- finishing --------------------------------------------------------------------------------------------

    def generation(self) -> dict:
        """What the manifest keeps about this run (ComfyUI gives a sampling run conditioning, not prompt text)."""
        latent, sigmas = self.args["latent_image"], self.args["sigmas"]
        sampler = self.args.get("sampler")
        function = getattr(sampler, "sampler_function", None)
        name = getattr(function, "__name__", type(sampler).__name__).removeprefix("sample_")
        return {
            "host": "comfyui",
            "width": int(latent.shape[-1]) * 8, "height": int(latent.shape[-2]) * 8,
            "batch_size": int(latent.shape[0]),
            "steps": int(sigmas.shape[-1]) - 1,
            "sampler_name": name,
            "seed": self.args.get("seed"),
            "cfg_scale": getattr(self.guider, "cfg", None),
            "sigmas": [float(s) for s in sigmas.reshape(-1)],
        }


class _Options:
    """This run's ``model_options`` seen as a patcher (what ``patcher/install.py`` and ``chain.py`` read and write):
    ``clone`` is itself, every setter writes into the run's copy of the options, never into the node's MODEL."""

    def __init__(self, patcher, model_options: dict):
        self.model = patcher.model
        self.model_options = model_options
        model_options.setdefault("transformer_options", {})

    def clone(self):
        return self

    def _transformer(self) -> dict:
        return self.model_options["transformer_options"]

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        to = self._transformer()
        replace = to["patches_replace"] = dict(to.get("patches_replace", {}))
        key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        replace[name] = {**replace.get(name, {}), key: patch}

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn1_patch(self, patch):
        to = self._transformer()
        patches = to["patches"] = dict(to.get("patches", {}))
        patches["attn1_patch"] = [*patches.get("attn1_patch", []), patch]

    def set_model_unet_function_wrapper(self, wrapper):
        self.model_options["model_function_wrapper"] = wrapper


def with_chunk_uuids(options: dict) -> dict:
    """A call RefDrop makes itself (a reference pass) with one ``uuids`` entry per chunk, as ComfyUI's
    ``_calc_cond_batch`` gives its own calls."""
    chunks = options.get("cond_or_uncond")
    if chunks is None or "uuids" not in options:
        return options
    return {**options, "uuids": [REFERENCE_PASS_UUID] * len(chunks)}


def _sigma(extra_options: dict) -> float:
    sigmas = extra_options["sigmas"]
    return float(sigmas.reshape(-1)[0]) if torch.is_tensor(sigmas) else float(sigmas[0])


def _in_window(extra_options: dict, window, to_sigma) -> bool:
    return to_sigma(window[1]) <= _sigma(extra_options) <= to_sigma(window[0])


def _windowed(patch, window, to_sigma, inner):
    """A Save that records only inside its step window: outside it the layer computes what it would without
    RefDrop (``inner``), and nothing is recorded."""
    if patch is None or window is None or tuple(window) == (0.0, 1.0):
        return patch

    def refdrop_save_window(q, k, v, extra_options):
        if PASS_KEY in extra_options or _in_window(extra_options, window, to_sigma):
            return patch(q, k, v, extra_options)
        return inner(q, k, v, extra_options)

    return refdrop_save_window


def _windowed_input(patch, window, to_sigma):
    if patch is None or window is None or tuple(window) == (0.0, 1.0):
        return patch

    def refdrop_save_input_window(n, context, value, extra_options):
        if PASS_KEY in extra_options or _in_window(extra_options, window, to_sigma):
            return patch(n, context, value, extra_options)
        return n, context, value

    return refdrop_save_input_window

