"""Where RefDrop's effect lives on the character model: the effect left when guidance is applied to one part only.

    python -m devmodel.char.ablation [--refs 3] [--seeds 24] [--block-size 6] [--rfg 0.6]

Each condition guides the same new images (seeds, pose prompts) by the same references at c = 0.6, restricted to
- a block group (input / middle / output) or a token level (32², 16², 8², 4²) or all levels but one, or SD1.5's
  "skip the first up-sampling block" (OUT03): the engine's own disabled groups / blocks;
- a step range (first / second half, thirds of the schedule): the engine's step_start / step_end;
- the cond chunk or the uncond chunk only, or the uncond chunk attending to the cond reference;
- the reference's K with the image's own V, or the image's own K with the reference's V.
The last two kinds use ``measurement_patch``, a measurement-only attn1 patch built here from the engine's parts
(the stored reference's rows as the Use patch reads them, the same attention and blend); with every chunk guided
and the reference's K and V it equals the engine's Use patch bit for bit (tests/test_charmodel.py checks that).

Printed per condition: the pooled attribute share gap vs plain (paired, mean ± sd over blocks of seeds), that gap
as a share of the full guidance's gap (ratio of the gaps summed over all blocks, ± sd of the per-block ratio), the
continuous ``1 - |out_X - out_full| / |out_full - out_plain|`` (mean ± sd over blocks) and the prompt gap.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lib_refdrop.attn.blend import expand_reference, rfg_blend
from lib_refdrop.attn.sources import StoredRows, layer_call
from lib_refdrop.diffusers import attention, layer_map
from lib_refdrop.reference.address import OccurrenceCounter, chunk_names, current_sigma, layer_id
from lib_refdrop.reference.reader import ReferenceReader
from lib_refdrop.reference.store import ReferenceStore
from lib_refdrop.run import PassPatches

from ..pipeline import Pipeline
from . import MODEL
from .measure import BLOCK_SIZE, Generated, engine_patch, save_references
from .spread import blocks_of, spread

RFG = 0.6
STEP_RANGES = {"first half": (0.0, 0.5), "second half": (0.5, 1.0), "first third": (0.0, 1 / 3),
               "middle third": (1 / 3, 2 / 3), "last third": (2 / 3, 1.0)}


@dataclass(frozen=True)
class Condition:
    """One way to restrict the guidance: engine settings, or what ``measurement_patch`` changes."""

    name: str
    kind: str
    settings: dict = field(default_factory=dict)  # lib_refdrop.params Use arguments
    chunks: tuple[str, ...] = ("uncond", "cond")  # chunks that are guided (measurement_patch)
    uncond_from: str = "uncond"                   # the reference chunk the uncond rows attend to
    k_from: str = "ref"                           # "ref" | "own"
    v_from: str = "ref"

    @property
    def custom(self) -> bool:
        return (self.chunks, self.uncond_from, self.k_from, self.v_from) != (("uncond", "cond"), "uncond", "ref", "ref")


def level_labels(pipe: Pipeline) -> dict[int, list[str]]:
    """Token level (0 = 32x32 tokens) -> the host block labels (IN01, ...) with attn1 there."""
    out: dict[int, list[str]] = {}
    for layer in layer_map(pipe.hook.unet):
        prefix = {"input": "IN", "middle": "M", "output": "OUT"}[layer.block[0]]
        label = f"{prefix}{layer.block[1]:02d}"
        if label not in out.setdefault(layer.level, []):
            out[layer.level].append(label)
    return out


def conditions(pipe: Pipeline) -> list[Condition]:
    levels = level_labels(pipe)
    every = [label for labels in levels.values() for label in labels]
    side = pipe.model.size
    out = [Condition("full (every layer, step and chunk)", "full")]
    for group in ("input", "middle", "output"):
        others = tuple(g for g in ("input", "middle", "output") if g != group)
        out.append(Condition(f"{group} blocks only", "group", {"disabled_groups": others}))
    for level, labels in sorted(levels.items()):
        tokens = f"{side // 2 ** level}²"
        if len(labels) > 1:  # the 4x4 level is the middle block alone, measured above
            out.append(Condition(f"{tokens} tokens only ({', '.join(labels)})", "level",
                                 {"disabled_blocks": tuple(b for b in every if b not in labels)}))
    for level in (0,):
        labels = levels[level]
        out.append(Condition(f"all but {side // 2 ** level}² tokens", "level", {"disabled_blocks": tuple(labels)}))
    out.append(Condition("skip first up-sampling block (OUT03)", "level", {"skip_first_up": True}))
    for name, (start, end) in STEP_RANGES.items():
        out.append(Condition(f"steps: {name}", "steps", {"step_start": start, "step_end": end}))
    out.append(Condition("cond chunk only (uncond plain)", "chunk", chunks=("cond",)))
    out.append(Condition("uncond chunk only", "chunk", chunks=("uncond",)))
    out.append(Condition("uncond attends to the cond reference", "chunk", uncond_from="cond"))
    out.append(Condition("reference K, own V", "kv", v_from="own"))
    out.append(Condition("own K, reference V", "kv", k_from="own"))
    return out


def measurement_patch(store: ReferenceStore, name: str, rfg: float, condition: Condition):
    """The patches of a pass guiding by stored reference ``name`` as ``condition`` says (an attn1 patch), and the
    function that closes the reference. Only for measuring: no step window, blocks or masks (those go through the
    engine)."""
    reader = ReferenceReader(store.open(name))
    source = StoredRows(reader)
    counter = OccurrenceCounter()

    def patch(q, k, v, extra_options):
        own = attention(q, k, v, extra_options)
        lid, sigma = layer_id(extra_options), current_sigma(extra_options)
        cond_or_uncond = extra_options["cond_or_uncond"]
        occurrences = [counter.next(lid, chunk, sigma) for chunk in chunk_names(cond_or_uncond)]
        call = layer_call(lid, sigma, cond_or_uncond, occurrences, q, k, v)
        source.check_layer(lid, q.shape[-1])
        pairs = []
        for i, chunk in enumerate(call.chunks):
            if chunk.startswith("uncond") and condition.uncond_from == "cond":
                call.chunks[i] = "cond0"   # read the cond reference's rows for this chunk
                pairs.append(source.rows(call, i))
                call.chunks[i] = chunk
            else:
                pairs.append(source.rows(call, i))
        ref_k = expand_reference([a for a, _ in pairs], call.rows) if condition.k_from == "ref" else k
        ref_v = expand_reference([b for _, b in pairs], call.rows) if condition.v_from == "ref" else v
        out = rfg_blend(own, attention(q, ref_k, ref_v, extra_options), rfg)
        for i, chunk in enumerate(call.chunks):
            if not chunk.startswith(condition.chunks):
                out[i * call.rows:(i + 1) * call.rows] = own[i * call.rows:(i + 1) * call.rows]
        return out

    return PassPatches(attn1=patch), reader.close


def patch_of(pipe: Pipeline, store: ReferenceStore, rfg: float, condition: Condition):
    if condition.custom:
        return lambda ref, seed: measurement_patch(store, ref.name, rfg, condition)
    return engine_patch(pipe, store, rfg, **condition.settings)


def run(pipe: Pipeline, store: ReferenceStore, refs, seeds: list[int], block_size: int, rfg: float,
        chosen: list[Condition]) -> dict[str, list[dict[str, float]]]:
    """Per condition: one dict per block with ``gap`` (pooled share gap), ``prompt`` (prompt gap), ``kept``
    (continuous vs full) and ``full gap``."""
    out: dict[str, list[dict[str, float]]] = {c.name: [] for c in chosen}
    full = chosen[0]
    for block in blocks_of(seeds, block_size):
        gen = Generated(pipe, refs, block)
        gen.plain()
        gen.add(full.name, patch_of(pipe, store, rfg, full))
        for cond in chosen:
            if cond is not full:
                gen.add(cond.name, patch_of(pipe, store, rfg, cond))
            gaps = gen.gaps(cond.name)
            out[cond.name].append({"gap": gaps["pooled"], "prompt": gaps["prompt"], "look": gaps["look"],
                                   "kept": gen.kept(cond.name, full.name),
                                   "full gap": gen.gaps(full.name)["pooled"]})
            if cond is not full:
                del gen.images[cond.name], gen.attrs[cond.name]
    return out


def table(result: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| guidance applied to | pooled share gap vs plain | share of the full gap | continuous kept | "
             "look gap | prompt gap |", "|---|---|---|---|---|---|"]
    for name, rows in result.items():
        gap = spread([r["gap"] for r in rows])
        total_full = sum(r["full gap"] for r in rows)
        ratio = sum(r["gap"] for r in rows) / total_full if total_full else math.nan
        per_block = spread([r["gap"] / r["full gap"] if r["full gap"] else math.nan for r in rows])
        kept = spread([r["kept"] for r in rows])
        lines.append(f"| {name} | {gap.cell()} | {ratio:.2f} ± {per_block.sd:.2f} | {kept.cell(2)} | "
                     f"{spread([r['look'] for r in rows]).cell()} | {spread([r['prompt'] for r in rows]).cell()} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=24)
    ap.add_argument("--block-size", type=int, default=6)
    ap.add_argument("--first-seed", type=int, default=BLOCK_SIZE, help="after the test's block (seeds 0..11)")
    ap.add_argument("--rfg", type=float, default=RFG)
    ap.add_argument("--only", default="", help="comma-separated kinds (group, level, steps, chunk, kv)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    pipe = Pipeline.load(MODEL)
    chosen = conditions(pipe)
    if args.only:
        kinds = set(args.only.split(","))
        chosen = [c for c in chosen if c.kind == "full" or c.kind in kinds]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        store = ReferenceStore(Path(tmp))
        refs = save_references(pipe, store, args.refs)
        print(f"c = {args.rfg}; {args.refs} references x seeds {seeds[0]}..{seeds[-1]} (n = {args.refs * len(seeds)} "
              f"images per condition) in blocks of {args.block_size} seeds; {pipe.sampler}, {pipe.steps} steps, "
              f"CFG {pipe.cfg}", flush=True)
        result = run(pipe, store, refs, seeds, args.block_size, args.rfg, chosen)
    print(table(result))
    print(f"({time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
