"""Addressing: layer ids, chunk names, occurrences and the sigma map."""

from __future__ import annotations

import math

import pytest

from lib_refdrop.reference.address import (
    OccurrenceCounter,
    block_label,
    chunk_names,
    layer_id,
    rows_per_chunk,
    split_layer_id,
)
from lib_refdrop.reference.sigmas import SigmaMap, Slot


def test_layer_ids_and_block_labels():
    assert layer_id({"block": ("input", 4), "block_index": 1}) == "input4.1"
    assert split_layer_id("output11.0") == ("output", 11, 0)
    assert [block_label(x) for x in ("input1.0", "middle0.9", "output3.0")] == ["IN01", "M00", "OUT03"]


@pytest.mark.parametrize("layout, names", [
    ([1, 0], ["uncond0", "cond0"]),
    ([0], ["cond0"]),
    ([1, 0, 0], ["uncond0", "cond0", "cond1"]),
    ([1], ["uncond0"]),
])
def test_chunk_names_keep_and_sub_prompts_apart(layout, names):
    assert chunk_names(layout) == names


def test_rows_per_chunk_refuses_a_layout_that_does_not_divide():
    assert rows_per_chunk(6, [1, 0]) == 3
    with pytest.raises(ValueError):
        rows_per_chunk(5, [1, 0])


def test_occurrences_count_repeated_evaluations_at_one_sigma():
    counter = OccurrenceCounter()
    assert [counter.next("input1.0", "cond0", 1.6) for _ in range(2)] == [0, 1]
    assert counter.next("input1.0", "uncond0", 1.6) == 0  # split calls count apart
    assert counter.next("input2.0", "cond0", 1.6) == 0


SLOTS = [Slot(0, 14.6, 0), Slot(1, 1.6, 0), Slot(2, 1.6, 1), Slot(3, 0.029, 0), Slot(4, 0.029, 1)]


def test_sigma_map_picks_the_nearest_in_log_sigma_and_the_occurrence():
    sigma_map = SigmaMap(SLOTS)
    assert sigma_map.lookup(1.6, 1) == SLOTS[2]
    assert sigma_map.lookup(1.6, 5) == SLOTS[2]  # more evaluations than saved: the last one
    assert sigma_map.lookup(4.0) == SLOTS[1]     # log-nearest: |ln 4 - ln 1.6| < |ln 4 - ln 14.6|
    assert sigma_map.lookup(6.0) == SLOTS[0]
    assert sigma_map.lookup(100.0) == SLOTS[0]   # clamped above
    assert sigma_map.lookup(0.001) == SLOTS[3]   # clamped below


def test_following_slot_is_the_next_evaluation_down_the_schedule():
    sigma_map = SigmaMap(SLOTS)
    assert [sigma_map.following(s) for s in SLOTS] == [SLOTS[1], SLOTS[2], SLOTS[3], SLOTS[4], None]


def test_blend_interpolates_in_log_sigma_and_is_exact_on_saved_sigmas():
    sigma_map = SigmaMap(SLOTS)
    assert sigma_map.blend(1.6, 1) == [(SLOTS[2], 1.0)]
    assert sigma_map.blend(50.0) == [(SLOTS[0], 1.0)] and sigma_map.blend(0.001, 1) == [(SLOTS[4], 1.0)]
    (low, w_low), (high, w_high) = sigma_map.blend(4.0, 1)
    assert (low, high) == (SLOTS[2], SLOTS[0])  # occurrence 1 where saved, else the last one
    assert w_high == pytest.approx((math.log(4.0) - math.log(1.6)) / (math.log(14.6) - math.log(1.6)))
    assert w_low + w_high == pytest.approx(1.0)
