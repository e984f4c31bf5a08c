"""A reference whose Save evaluated the uncond chunk at some sigmas only (Forge Classic's first step, "Ignore
negative prompt during early steps", NGMS ``s_min_uncond``), used with full CFG at every step: which treatment of the
uncond rows at a sigma where the reference has none keeps RefDrop's effect on the character model.

    python -m devmodel.char.mixed_cfg [--refs 3] [--blocks 2] [--block-size 12]

Treatments: "interpolate" (the engine: the uncond rows of the saved slots that hold them, interpolated in
log-sigma, the nearest at the ends) and "plain there" (the uncond rows stay unguided at such a sigma).
Two ways to make such a reference, exact profile, 8 euler steps at CFG 3 like ``measure``:
- controlled: the Save's generation is the full-CFG one, only the recorder is not shown the uncond rows at the
  layout's sigmas, so the full reference ("full") is the exact baseline of the same image;
- real: the Save's sampler evaluates the cond chunk alone at those sigmas (its image changes too).
Per treatment: the pooled share gap vs plain (``measure.Generated``), the ratio to the full reference's gap, and
(controlled only) the continuous effect kept vs the full reference (``Generated.kept``).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from dataclasses import dataclass

import torch

from lib_refdrop.attn import sources
from lib_refdrop.diffusers import attention
from lib_refdrop.reference.address import current_sigma
from lib_refdrop.reference.store import ReferenceStore
from lib_refdrop.run import PassPatches
from lib_refdrop.standalone import start_save

from ..pipeline import Pipeline, to_pil
from ..sampling import SCHEDULE, model_call
from . import MODEL
from .data import classify
from .measure import BLOCK_SIZE, PROFILE_RFG, Generated, Reference, save_references
from .spread import blocks_of, spread

LAYOUTS = {"first step": (0,), "early 25 %": (0, 1), "last 25 %": (6, 7)}  # cond-only step ordinals of 8


def skipped_sigmas(pipe: Pipeline, steps: tuple[int, ...]) -> set[float]:
    sigmas = SCHEDULE.get_sigmas(pipe.steps)
    return {float(sigmas[i]) for i in steps}


@dataclass
class MixedPipeline(Pipeline):
    """The Save's sampler evaluates the cond chunk alone (no CFG) at the sigmas of ``cond_only``."""

    cond_only: frozenset = frozenset()

    def _denoiser(self, prompts: torch.Tensor):
        full = super()._denoiser(prompts)

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            if float(sigma) not in self.cond_only:
                return full(x, sigma)
            eps = model_call(self.hook, x, sigma, prompts[x.shape[0]:], [0])
            return x - sigma * eps

        return denoise


def hiding_uncond(patch, cond_only: set[float]):
    """A Save patch that is shown only the cond rows of the calls at ``cond_only`` (the image stays the full one)."""

    def hidden(q, k, v, extra_options):
        flags = list(extra_options["cond_or_uncond"])
        if current_sigma(extra_options) not in cond_only or 1 not in flags:
            return patch(q, k, v, extra_options)
        rows = q.shape[0] // len(flags)
        keep = torch.cat([torch.arange(i * rows, (i + 1) * rows) for i, f in enumerate(flags) if f != 1])
        patch(q[keep], k[keep], v[keep], {**extra_options, "cond_or_uncond": [f for f in flags if f != 1]})
        return attention(q, k, v, extra_options)

    return hidden


@contextlib.contextmanager
def plain_where_missing():
    """The "plain there" treatment: a chunk's rows stay unguided at a sigma whose saved slots (the two around it)
    do not all hold that chunk."""
    rows, guides = sources.StoredRows.rows, sources.StoredRows.guides

    def remember(self, call, i):
        self._last = (call.sigma, call.occurrences[i])
        return rows(self, call, i)

    def guides_here(self, chunk):
        reader = self.reader
        source = reader.source_chunk(chunk)
        sigma, occurrence = getattr(self, "_last", (None, 0))
        if sigma is not None:
            holders = {int(s["index"]) for s in reader.manifest["slots"] if source in s.get("chunks", [source])}
            if any(slot.index not in holders for slot, _ in reader.sigma_map.blend(sigma, occurrence)):
                return False
        return guides(self, chunk)

    sources.StoredRows.rows, sources.StoredRows.guides = remember, guides_here
    try:
        yield
    finally:
        sources.StoredRows.rows, sources.StoredRows.guides = rows, guides


def save_hidden(pipe: Pipeline, store: ReferenceStore, ref: Reference, name: str, cond_only: set[float]):
    with start_save(store, name, pipe.pass_context(ref.seed), profile="exact", overwrite=True) as save:
        image = pipe.generate([ref.pose], [ref.seed], PassPatches(attn1=hiding_uncond(save.patch, cond_only)))
        save.finish({"pose": ref.pose, "seed": ref.seed}, to_pil(image[0], pipe.model.preview_scale))
    return Reference(name, ref.pose, ref.seed, classify(image[0]), image[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--refs", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=BLOCK_SIZE)
    parser.add_argument("--layouts", nargs="*", default=list(LAYOUTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    pipe = Pipeline.load(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        store = ReferenceStore(tmp)
        full = save_references(pipe, store, args.refs, prefix="full")
        seeds = list(range(BLOCK_SIZE, BLOCK_SIZE + args.blocks * args.block_size))
        gens = [Generated(pipe, full, block) for block in blocks_of(seeds, args.block_size)]
        for gen in gens:
            gen.plain()
            gen.add("full", lambda ref, seed: pipe.use_patches(store, ref.name, PROFILE_RFG, seed))
        print(f"{'layout':<12} {'made':<11} {'treatment':<12} {'pooled gap':>11} {'/ full':>8} {'kept vs full':>13}")
        full_gap = sum(g.gaps("full")["pooled"] for g in gens)
        print(f"{'-':<12} {'-':<11} {'full':<12} {full_gap / len(gens):>+11.3f} {1:>8.3f} {'1':>13}")
        for layout in args.layouts:
            cond_only = skipped_sigmas(pipe, LAYOUTS[layout])
            mixed = MixedPipeline(pipe.model, pipe.hook, pipe.prompts, pipe.steps, cond_only=frozenset(cond_only))
            for made in ("controlled", "real"):
                names = {}
                for ref in full:
                    name = f"{made}-{layout}-{ref.name}".replace(" ", "").replace("%", "")
                    if made == "controlled":
                        save_hidden(pipe, store, ref, name, cond_only)
                    else:
                        mixed.save_reference(store, name, ref.pose, ref.seed, "exact")
                    names[ref.name] = name
                looks = {ref.name: classify(_preview(store, names[ref.name], pipe, mixed, made, ref, cond_only))
                         for ref in full}
                for treatment in ("interpolate", "plain there"):
                    key = f"{made} {layout} {treatment}"
                    gaps, kept = [], []
                    for gen in gens:
                        with plain_where_missing() if treatment == "plain there" else contextlib.nullcontext():
                            gen.add(key, lambda ref, seed, names=names: pipe.use_patches(
                                store, names[ref.name], PROFILE_RFG, seed))
                        gaps.append(_gap_with_looks(gen, key, looks))
                        kept.append(gen.kept(key, "full"))
                    gap = sum(gaps) / len(gaps)
                    kept_cell = spread(kept).cell() if made == "controlled" else "-"
                    print(f"{layout:<12} {made:<11} {treatment:<12} {gap:>+11.3f} "
                          f"{gap / (full_gap / len(gens)):>8.3f} {kept_cell:>13}", flush=True)
    print(f"{time.monotonic() - started:.0f} s")


def _preview(store, name, pipe, mixed, made, ref, cond_only):
    """The reference's own image (its look is what a new image should take)."""
    source = pipe if made == "controlled" else mixed
    return source.generate([ref.pose], [ref.seed])[0]


def _gap_with_looks(gen: Generated, key: str, looks: dict) -> float:
    """Pooled share gap vs plain, against each reference's own look (a real mixed Save's image has its own)."""
    from .measure import shares
    refs = [Reference(r.name, r.pose, r.seed, looks[r.name], r.image) for r in gen.refs]
    mine = shares(list(zip(refs, gen.attrs[key], strict=True)), gen.poses)
    plain = shares(list(zip(refs, gen.attrs["plain"], strict=True)), gen.poses)
    return mine["pooled"] - plain["pooled"]


if __name__ == "__main__":
    main()
