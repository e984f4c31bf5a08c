"""Chaining with what another extension put on the patcher first: its attn1 replace patches, and its model function
wrapper.

The model function wrapper RefDrop puts on the clone of a pass is chained with one already there. The hosts (ComfyUI,
reForge, Forge) call ``model_options["model_function_wrapper"](apply_model, args)`` around every batched U-Net call
(Forge ``backend/sampling/sampling_function.py`` ``calc_cond_uncond_batch``, reForge
``ldm_patched/modules/samplers.py`` ``_calc_cond_batch``) with ComfyUI's ``args`` = ``{"input", "timestep", "c",
"cond_or_uncond"}``: ``input`` the noisy latent before the model's input scaling, ``timestep`` the sigma of each
row, ``c`` the keyword arguments of ``apply_model`` with the ``transformer_options`` every attn1 patch receives as
``extra_options``. RefDrop's own wrapper (``attn/refpass.py``) uses that same convention. What the adapters add:

- **Calls RefDrop makes itself** (the reference pass) get the ``transformer_options`` keys the host derives
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

from ..attn.patches import Attention

ModelFunction = Callable  # (apply_model, args) -> model output, the hosts' model_function_wrapper
CompleteExtraCall = Callable[[dict], dict]  # transformer_options of a call RefDrop makes -> with the host's keys


def no_completion(options: dict) -> dict:
    return options


def refdrop_model_function(refdrop: ModelFunction, complete_extra_call: CompleteExtraCall) -> ModelFunction:
    """``refdrop`` with an ``apply_model`` that completes the ``transformer_options`` of the calls it makes itself
    (any call whose ``transformer_options`` is not the host's own object)."""

    def refdrop_model_function(apply_model, args):
        host_options = args["c"].get("transformer_options")

        def apply(x, t, **c):
            options = c.get("transformer_options")
            if options is not None and options is not host_options:
                c = {**c, "transformer_options": complete_extra_call(options)}
            return apply_model(x, t, **c)

        return refdrop(apply, args)

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


def install_model_function(unet, refdrop: ModelFunction, complete_extra_call: CompleteExtraCall = no_completion):
    """Put ``refdrop`` on the patcher ``unet`` (a clone the pass owns), inside the wrapper it already has."""
    earlier = unet.model_options.get("model_function_wrapper")
    unet.set_model_unet_function_wrapper(
        chain_model_functions(earlier, refdrop_model_function(refdrop, complete_extra_call)))


# Both hosts look an attn1 replace patch up by ``(block_name, number, block_index)`` first, then by
# ``(block_name, number)``, and ``set_model_replace_all`` overwrites every 3-tuple key (docs/hosts.md, "The attn1
# replace patch"): a patch another extension registered before RefDrop would silently stop working, so ``chain``
# keeps calling it underneath RefDrop instead.
def chain(earlier: dict, attention: Attention) -> Attention:
    """What attn1 computes without RefDrop: the ``earlier`` patch registered for this layer (by the hosts' key
    lookup), else ``attention``."""
    if not earlier:
        return attention

    def inner(q, k, v, extra_options):
        block = extra_options.get("block")
        patch = None
        if block is not None:
            key = (block[0], block[1])
            patch = earlier.get((*key, extra_options.get("block_index", 0))) or earlier.get(key)
        if patch is None:
            return attention(q, k, v, extra_options)
        return patch(q, k, v, extra_options)

    return inner


def earlier_attn1_patches(unet) -> dict:
    """A snapshot of the attn1 replace patches already on the patcher ``unet`` (another extension's), by layer key."""
    options = getattr(unet, "model_options", None) or {}
    replace = options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    return dict(replace)
