"""RefDrop's effect on a trained model (devmodel/toy/): direction, diversity and prompt following, measured from pixels.

Random-weight U-Nets (tests/support/hostsim) prove exactness; only a model whose attention means something shows the
effect users want. The test measures one block of seeds (0..N_SEEDS-1, against N_REFS references) and compares
paired shares (same seeds across c) with thresholds set, before looking at this block, from the spread over
disjoint calibration blocks of the same size: threshold = mean - 3 sd of the block gaps (mean + 3 sd for gaps
that should be negative). ``python -m devmodel.toy.spread`` measures them; the table is in devmodel/toy/TRAINING.md.
"look" = shape colour and background both as in the reference.
"""

from __future__ import annotations

import pytest
import torch

from devmodel.pipeline import Pipeline
from devmodel.toy import MODEL
from devmodel.toy.data import BACKGROUNDS, SHAPE_COLOURS, SHAPES, classify
from devmodel.toy.measure import Shares, measure_rfg, prompts_for, save_references
from lib_refdrop.reference.profiles import PROFILES
from lib_refdrop.reference.store import ReferenceStore

N_REFS = 3          # references: one per shape, different looks
N_SEEDS = 18        # new images per reference and strength (6 per shape prompt): seeds 0..17
N_PLAIN = 36        # plain images (seeds 0..35) for the model's own checks: cheap, and 18 cannot show prompt following

# Thresholds = mean - 3 sd (mean + 3 sd for falls) of the block gaps over disjoint calibration blocks of the test's
# size (17 blocks of 18 seeds x 3 references, seeds 18..323; 8 blocks of 36 plain seeds, seeds 36..323), rounded
# to 0.01 toward the safe side; an attribute is checked only where that bound excludes zero (TRAINING.md: margins).
PLAIN_PROMPT_MIN = 0.37                            # plain share following the prompt (chance 1/3): 0.642 - 3 x 0.088
RISE_AT_06 = {"background": 0.10, "both": 0.05}    # c = 0.6 minus plain: 0.232 - 3 x 0.043, 0.154 - 3 x 0.033
PROMPT_DROP_AT_06 = -0.29                          # c = 0.6 minus plain prompt share: -0.033 - 3 x 0.083
FALL_AT_NEG = {"background": -0.02}                # c = -0.5 minus plain: -0.105 + 3 x 0.026
PROFILE_RISE_AT_06 = {"balanced": 0.05, "compact": 0.03}  # look (both) gap: 0.154 - 3 x 0.033, 0.156 - 3 x 0.039
# Not calibrated on this model by their own spread: a trajectory gives the exact profile's rows (tests/test_profile_
# trajectory.py), so exact's floor; lean keeps more of the effect than compact on random weights (90 % vs 81 %) and
# on the trained character model (97.7 % vs 86 %: README "Storage profiles"), so compact's floor.
PROFILE_RISE_AT_06 |= {"trajectory": RISE_AT_06["both"], "lean": PROFILE_RISE_AT_06["compact"]}


def gap(high: Shares, low: Shares, attr: str) -> tuple[float, str]:
    g = getattr(high, attr) - getattr(low, attr)
    return g, f"{attr}: {getattr(high, attr):.3f} vs {getattr(low, attr):.3f} (gap {g:+.3f})"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as devmodel.toy.spread measured the thresholds (and this block); restored afterwards
    pipe = Pipeline.load(MODEL)
    store = ReferenceStore(tmp_path_factory.mktemp("toy-refs"))
    refs = save_references(pipe, store, N_REFS)
    seeds = list(range(N_SEEDS))
    plain_attrs = [classify(img) for img in pipe.generate(prompts_for(N_PLAIN), list(range(N_PLAIN)))]
    plain = measure_rfg(pipe, store, refs, 0.0, seeds, plain=plain_attrs[:N_SEEDS])  # same prompt cycle
    plain_all = measure_rfg(pipe, store, refs, 0.0, list(range(N_PLAIN)), plain=plain_attrs)
    yield dict(pipe=pipe, store=store, refs=refs, seeds=seeds, plain=plain, plain_all=plain_all,
               plain_attrs=plain_attrs)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toward(toy) -> Shares:
    """The c = 0.6 shares, generated once for the tests that read them."""
    return measure_rfg(toy["pipe"], toy["store"], toy["refs"], 0.6, toy["seeds"])


def test_plain_samples_vary_and_follow_the_prompt(toy):
    """The data set is not trivial: without RefDrop the model draws varied looks, and the shape it is asked for."""
    attrs = toy["plain_attrs"]
    assert len({a.colour for a in attrs} - {None}) == len(SHAPE_COLOURS), attrs
    assert len({a.background for a in attrs} - {None}) == len(BACKGROUNDS), attrs
    assert {a.shape for a in attrs} >= set(SHAPES)
    assert toy["plain_all"].prompt > PLAIN_PROMPT_MIN > 1 / len(SHAPES), toy["plain_all"]


def test_references_differ(toy):
    assert len({(r.look.colour, r.look.background) for r in toy["refs"]}) > 1


@pytest.mark.parametrize("attr", sorted(RISE_AT_06))
def test_positive_rfg_takes_the_reference_look(toy, toward, attr):
    g, why = gap(toward, toy["plain"], attr)
    assert g > RISE_AT_06[attr], why


def test_positive_rfg_still_follows_the_prompt(toy, toward):
    g, why = gap(toward, toy["plain"], "prompt")
    assert g > PROMPT_DROP_AT_06, why


def test_negative_rfg_moves_away_from_the_reference(toy):
    away = measure_rfg(toy["pipe"], toy["store"], toy["refs"], -0.5, toy["seeds"])
    for attr, bound in FALL_AT_NEG.items():
        g, why = gap(away, toy["plain"], attr)
        assert g < bound, why


def test_use_at_the_reference_seed_reproduces_it(toy):
    """Through the trained model too: same seed and prompt, any c, gives the reference image bit for bit."""
    pipe, ref = toy["pipe"], toy["refs"][0]
    again = pipe.use_reference(toy["store"], ref.name, 0.6, [ref.shape], [ref.seed])
    saved = pipe.generate([ref.shape], [ref.seed])
    assert torch.equal(again, saved)


@pytest.mark.parametrize("profile", [name for name in PROFILES if name != "exact"])
def test_every_profile_keeps_the_direction(toy, profile):
    assert profile in PROFILE_RISE_AT_06, f"measure {profile}'s spread first: python -m devmodel.toy.spread"
    refs = save_references(toy["pipe"], toy["store"], N_REFS, profile=profile, prefix=f"{profile}-")
    use = measure_rfg(toy["pipe"], toy["store"], refs, 0.6, toy["seeds"])
    g, why = gap(use, toy["plain"], "both")
    assert g > PROFILE_RISE_AT_06[profile], f"profile {profile}: {why}"
