"""Emulation of how Forge / reForge call an attn1 *replace patch* (docs/hosts.md, "The attn1 replace patch").

:class:`AttnHost` is the library's diffusers host (lib_refdrop/diffusers.py: a processor on every attn1 module that
calls the patch like the hosts' ``BasicTransformerBlock``; devmodel/unets.py ``SDHost``) plus what only the tests
need of a host: each host's own ``extra_options`` keys, per-layer patches looked up like the hosts'
``patches_replace``, other extensions' attn1_patches and token merging.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import UNet2DConditionModel

from devmodel.unets import SDHost
from lib_refdrop.diffusers import LayerInfo, attention, sdpa_attention

__all__ = ["AttnHost", "RecordingPatch", "host_attention", "sdpa_attention", "tome_groups"]

Patch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]
FLAVOURS = (None, "forge", "reforge")


def host_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """What attn1 computes without RefDrop: the library's diffusers host's plain attention (``sdpa_attention``),
    for ``PassContext.attention``."""
    return attention(q, k, v, extra_options)


def tome_groups(tokens: int, ratio: float) -> tuple[torch.Tensor, int]:
    """Token-merging stand-in: ``(group of each token, number of merged tokens)``.

    Forge's ToMe keeps ``tokens - min(int(tokens*ratio), 3*tokens//4)`` query tokens (256 -> 128 at 0.5).  We merge
    runs of neighbouring tokens (pairs at 0.5) by averaging and unmerge by copying the merged result back to every
    member: same shapes as the host, not ToMe's similarity matching.
    """
    n_keep = tokens - min(int(tokens * ratio), 3 * tokens // 4)
    groups = torch.arange(tokens) * n_keep // tokens
    return groups, n_keep


def _tome_merge(n: torch.Tensor, groups: torch.Tensor, n_keep: int) -> torch.Tensor:
    summed = n.new_zeros(n.shape[0], n_keep, n.shape[2]).index_add_(1, groups, n)
    counts = torch.bincount(groups, minlength=n_keep).to(n.dtype)
    return summed / counts[None, :, None]


class RecordingPatch:
    """A patch that logs every call (a compact summary plus the raw ``extra_options``) and runs plain attention.

    Used by the trace tests, and handy for engine tests that want to see what the host passed.
    """

    def __init__(self, inner: Patch | None = None):
        self.inner = inner
        self.calls: list[dict] = []

    def __call__(self, q, k, v, extra_options):
        eo = extra_options
        self.calls.append(dict(
            block=tuple(eo["block"]), block_index=eo["block_index"], transformer_index=eo["transformer_index"],
            cond_or_uncond=list(eo["cond_or_uncond"]), q=list(q.shape), k=list(k.shape), v=list(v.shape),
            sigmas=eo["sigmas"].tolist(), n_heads=eo["n_heads"], dim_head=eo["dim_head"],
            original_shape=list(eo["original_shape"]), extra_options=eo,
        ))
        if self.inner is not None:
            return self.inner(q, k, v, extra_options)
        return sdpa_attention(q, k, v, eo["n_heads"])


class AttnHost(SDHost):
    """A diffusers U-Net driven like a Forge/reForge U-Net with an attn1 replace patch.

    - ``patch``: one function for every attn1 layer (``set_model_replace_all(patch, "attn1")``); ``None`` = plain.
    - ``patches_replace``: per-layer patches keyed like the hosts, ``(name, number, block_index)`` first, then
      ``(name, number)``; they win over ``patch``.
    - ``transformer_options``: custom keys copied (by reference) into every ``extra_options``, like
      ``unet.set_transformer_option``.
    - ``attn1_patches``: ``set_model_attn1_patch``'s chain, run on the normed hidden states before the projections.
    - ``model_wrapper``: a model function wrapper, ``wrapper(apply_model, args)`` (``set_model_unet_function_wrapper``
      in both hosts); ``devmodel.sampling`` calls the U-Net through it.
    - ``tome_ratio``: token-merging emulation on the highest-resolution attention level (query side only).  On
      SD1.5 that is where Forge merges (input 1,2 / output 9,10,11).  Real ToMe (max_downsample 1) would merge
      nothing on SDXL, whose top level has no attention; hostsim merges SDXL's input 4,5 / output 3,4,5 instead so
      engine tests still see ``q`` shorter than ``k``/``v`` there.
    - ``host_flavour``: ``None`` sends only the keys both hosts send; ``"forge"`` adds ``cond_mark``,
      ``cond_indices``, ``uncond_indices``; ``"reforge"`` adds ``uuids``, ``activations_shape``, ``attn_precision``.

    Call :meth:`forward` (not ``unet`` directly) so that the per-call keys (``cond_or_uncond``, ``sigmas``,
    ``original_shape``) are known.
    """

    attention = staticmethod(sdpa_attention)

    def __init__(self, unet: UNet2DConditionModel, patch: Patch | None = None, tome_ratio: float = 0.0,
                 host_flavour: str | None = None):
        if host_flavour not in FLAVOURS:
            raise ValueError(f"host_flavour must be one of {FLAVOURS}")
        super().__init__(unet)
        self.patch = patch
        self.patches_replace: dict[tuple, Patch] = {}
        self.transformer_options: dict = {}
        self.attn1_patches: list = []  # set_model_attn1_patch: (n, context, value, extra_options) -> the same
        self.tome_ratio = tome_ratio
        self.host_flavour = host_flavour
        self._activations_shape: list[int] | None = None
        self.tome_level = min(layer.level for layer in self.layers)

    @property
    def patch(self) -> Patch | None:
        return self.config.attn1

    @patch.setter
    def patch(self, patch: Patch | None) -> None:
        self.config.attn1 = patch

    @property
    def model_wrapper(self):
        return self.config.model_wrapper

    @model_wrapper.setter
    def model_wrapper(self, wrapper) -> None:
        self.config.model_wrapper = wrapper

    # -- lifecycle -------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Restore the original processors and remove the hooks (the U-Net is then plain diffusers again)."""
        self.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _transformer_entered(self, module, args, kwargs):
        super()._transformer_entered(module, args, kwargs)
        hidden = args[0] if args else kwargs["hidden_states"]
        self._activations_shape = list(hidden.shape)

    # -- attn1 -----------------------------------------------------------------------------------------------
    def patch_for(self, layer: LayerInfo) -> Patch | None:
        pr = self.patches_replace
        if pr:
            if layer.key in pr:
                return pr[layer.key]
            if layer.block in pr:
                return pr[layer.block]
        return self.patch

    def input_patches(self, layer: LayerInfo) -> list:
        return self.attn1_patches + super().input_patches(layer)

    def extra_options(self, layer: LayerInfo) -> dict:
        """A fresh ``extra_options`` dict for ``layer`` in the current forward, with the host's key order: the
        library's keys, ``transformer_options`` first, and this host flavour's own keys where the host puts them."""
        common = super().extra_options(layer)
        eo = {**self.transformer_options, **common}
        if self.host_flavour is None:
            return eo
        cou, sigmas = common["cond_or_uncond"], common["sigmas"]
        own: dict[str, dict] = {}  # the key this flavour's keys follow -> those keys
        if self.host_flavour == "reforge":
            own["cond_or_uncond"] = {"uuids": [0] * len(cou)}
            own["block"] = {"activations_shape": list(self._activations_shape)}
            own["dim_head"] = {"attn_precision": None}
        else:
            mark = [float(c) for c in cou for _ in range(sigmas.shape[0])]
            own["sigmas"] = {"cond_mark": torch.tensor(mark, dtype=torch.float32),
                             "cond_indices": [i for i, m in enumerate(mark) if m == 0.0],
                             "uncond_indices": [i for i, m in enumerate(mark) if m == 1.0]}
        out = {}
        for key, value in eo.items():
            out[key] = value
            out.update(own.get(key, {}))
        return out

    def attn1(self, attn, layer: LayerInfo, n: torch.Tensor) -> torch.Tensor:
        """``n`` is the normed hidden state ``[rows, tokens, C]``; returns the attn1 output after ``to_out``."""
        if not (self.tome_ratio > 0 and layer.level == self.tome_level):
            return super().attn1(attn, layer, n)
        groups, n_keep = tome_groups(n.shape[1], self.tome_ratio)
        q_in = _tome_merge(n, groups, n_keep)  # Forge: ToMe attn1_patch shrinks n, context/value stay n
        out = attn.to_out[1](attn.to_out[0](self.attend(attn, layer, q_in, n, n)))
        return out[:, groups]  # ToMe attn1_output_patch: unmerge back to all tokens
