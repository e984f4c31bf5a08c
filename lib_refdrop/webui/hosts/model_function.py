"""The model function wrapper RefDrop puts on the U-Net clone of a pass, chained with one already there.

Both hosts call ``model_options["model_function_wrapper"](apply_model, args)`` around every batched U-Net call
(Forge ``backend/sampling/sampling_function.py`` ``calc_cond_uncond_batch``, reForge
``ldm_patched/modules/samplers.py`` ``_calc_cond_batch``) with ComfyUI's ``args`` = ``{"input", "timestep", "c",
"cond_or_uncond"}``: ``input`` the noisy latent before the model's input scaling, ``timestep`` the sigma of each
row, ``c`` the keyword arguments of ``apply_model`` with the ``transformer_options`` every attn1 patch receives as
``extra_options``. The engine's wrapper uses that same convention. What the adapters add:

- **Calls the engine makes itself** (the reference pass) get the ``transformer_options`` keys the host derives
  from ``cond_or_uncond`` and ``sigmas`` recomputed for their own rows (``complete_extra_call``, one per host), so
  other patches reading them (Forge's ``cond_mark``, ``cond_indices``) see a consistent one-row call. The host's
  own call is passed on untouched.
- **Chaining.** A wrapper registered earlier (another extension's) stays outermost and RefDrop's runs inside it,
  right around the host's ``apply_model``: every U-Net call the earlier wrapper makes is still preceded by the
  reference pass, and the pass itself never goes through the earlier wrapper (it is not one of the generation's
  calls). The patcher's ``model_patches_to`` moves a wrapper that has ``to``; the chain forwards it.
- Only plain closures are stored: ``clone()`` deep-copies ``model_options``, which keeps functions by reference
  but would copy an object (and everything a bound method's object holds).
"""

from __future__ import annotations

from collections.abc import Callable

ModelFunction = Callable  # (apply_model, args) -> model output, the hosts' model_function_wrapper
CompleteExtraCall = Callable[[dict], dict]  # transformer_options of an engine-made call -> with the host's keys


def no_completion(options: dict) -> dict:
    return options


def refdrop_model_function(engine: ModelFunction, complete_extra_call: CompleteExtraCall) -> ModelFunction:
    """``engine`` with an ``apply_model`` that completes the ``transformer_options`` of the calls it makes itself
    (any call whose ``transformer_options`` is not the host's own object)."""

    def refdrop_model_function(apply_model, args):
        host_options = args["c"].get("transformer_options")

        def apply(x, t, **c):
            options = c.get("transformer_options")
            if options is not None and options is not host_options:
                c = {**c, "transformer_options": complete_extra_call(options)}
            return apply_model(x, t, **c)

        return engine(apply, args)

    return refdrop_model_function


def chain_model_functions(earlier: ModelFunction | None, inner: ModelFunction) -> ModelFunction:
    """``earlier`` (if any) around ``inner``: each ``apply_model`` call ``earlier`` makes goes through ``inner``."""
    if earlier is None:
        return inner

    def chained(apply_model, args):
        def through_inner(x, t, **c):
            cond_or_uncond = c.get("transformer_options", {}).get("cond_or_uncond", args.get("cond_or_uncond"))
            return inner(apply_model, {"input": x, "timestep": t, "c": c, "cond_or_uncond": cond_or_uncond})

        return earlier(through_inner, args)

    if hasattr(earlier, "to"):  # ModelPatcher.model_patches_to(device or dtype) replaces the wrapper by .to's result
        chained.to = lambda where: chain_model_functions(earlier.to(where), inner)
    return chained


def install_model_function(unet, engine: ModelFunction, complete_extra_call: CompleteExtraCall = no_completion):
    """Put ``engine`` on the patcher ``unet`` (a clone the pass owns), inside the wrapper it already has."""
    earlier = unet.model_options.get("model_function_wrapper")
    unet.set_model_unet_function_wrapper(
        chain_model_functions(earlier, refdrop_model_function(engine, complete_extra_call)))
