"""Model mismatch in every form, and a schedule the reference's sigmas do not cover (clamped to the nearest)."""

from __future__ import annotations

import pytest
import torch

from lib_refdrop.errors import RefDropError
from lib_refdrop.reference.reader import ReferenceReader, slots_of
from lib_refdrop.reference.sigmas import SigmaMap
from lib_refdrop.reference.store import ReferenceStore
from tests.support import faultkit


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    store = ReferenceStore(tmp_path_factory.mktemp("model"))
    calls = list(faultkit.trace_calls(limit=16))
    plain = faultkit.save_generation(store, "sd15-ref", calls)
    return store, calls, plain


def _use(store, calls, family="sd15", rfg=0.5):
    return faultkit.use_generation(store, "sd15-ref", rfg, calls, family=family)


@pytest.mark.parametrize("family, label", [("sdxl", "SDXL"), ("sd2", "SD2"), ("sd3", "SD3")])
def test_another_family_is_refused_with_both_names(saved, family, label):
    store, calls, _ = saved
    message = f"'sd15-ref' was saved with an SD1.5 model, but the current model is {label}"
    with pytest.raises(RefDropError, match=message):
        _use(store, calls, family)


def test_same_family_with_other_layer_widths_is_refused(saved):
    store, calls, _ = saved
    wider = [(*(torch.cat([t, t], -1) for t in (q, k, v)), {**eo, "dim_head": eo["dim_head"] * 2})
             for q, k, v, eo in calls]
    with pytest.raises(RefDropError, match=r"'sd15-ref' layer input1.0 is 320 wide, the current model's is 640"):
        _use(store, wider)


def test_same_family_with_other_layers_is_refused(saved):
    store, calls, _ = saved
    moved = [(q, k, v, {**eo, "block": ["input", 9]}) for q, k, v, eo in calls]
    with pytest.raises(RefDropError, match="'sd15-ref' has no layer input9.0"):
        _use(store, moved)


def test_unknown_family_is_checked_layer_by_layer(saved):
    store, calls, plain = saved
    out = _use(store, calls, family="unknown")  # a model the hosts do not flag: the layers decide
    assert all(torch.equal(a, b) for a, b in zip(out, plain, strict=True))


def test_sigmas_outside_the_saved_range_clamp_to_the_nearest_end(tmp_path):
    """Documented behaviour: a schedule reaching above the highest saved sigma uses the highest saved step, one
    going below the lowest uses the lowest; in between, the nearest in log-sigma."""
    store = ReferenceStore(tmp_path)
    manifest = faultkit.make_reference(store, "narrow", sigmas=(5.0, 2.0, 1.0))
    sigma_map = SigmaMap(slots_of(manifest))
    assert sigma_map.lookup(80.0).sigma == 5.0
    assert sigma_map.lookup(0.01).sigma == 1.0
    assert sigma_map.lookup(0.0).sigma == 1.0
    assert sigma_map.lookup(3.3).sigma == 5.0  # nearest in log-sigma (linearly, 2.0 would be nearer)
    reader = ReferenceReader(store.open("narrow"))
    top = reader.tensors(sigma_map.lookup(1000.0), torch.device("cpu"), torch.float32)
    assert torch.equal(top["input1.0/cond0/k"], faultkit.slot_tensors(0, 0)["input1.0/cond0/k"])
