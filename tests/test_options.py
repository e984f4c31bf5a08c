"""Hostile values in the host's config.json (``shared.opts.data``): every Settings reader returns a usable value,
says once what it used instead, and the extension still loads.

config.json is plain JSON edited by hand or by other tools, so it can hold ``Infinity``, ``NaN``, huge integers,
lists, objects or null where RefDrop expects a number, a name or a folder.
"""

from __future__ import annotations

import math

import pytest

from lib_refdrop.reference.profiles import DEFAULT_PROFILE
from lib_refdrop.reference.reader import RAM_CACHE
from lib_refdrop.webui import opts as options
from tests.support import fakehost

SLIDER_MAX_MB = 65536  # the RAM budget slider's maximum on the Settings page


@pytest.fixture
def config(tmp_path, monkeypatch):
    """The host's loaded config.json: a dict to put values in, read by ``options`` through ``modules.shared``."""
    monkeypatch.setattr(options, "_reported", set(), raising=False)  # messages are printed once per process
    budget = RAM_CACHE.budget
    with fakehost.activated("forge", models_path=tmp_path / "models"):
        from modules import shared

        yield shared.opts.data
    RAM_CACHE.set_budget(budget)


def default_folder(tmp_path) -> str:
    return str(tmp_path / "models" / "RefDrop")


RAM = "refdrop_ram_budget_mb"
RFG = "refdrop_default_rfg"
PROFILE = "refdrop_default_profile"
OVERWRITE = "refdrop_overwrite_default"
BAKE = "refdrop_bake_trajectories"
FOLDER = "refdrop_store_folder"

REFUSED = [
    (RAM, math.inf, SLIDER_MAX_MB), (RAM, -math.inf, 0), (RAM, math.nan, 4096), (RAM, -1, 0),
    (RAM, 10**400, SLIDER_MAX_MB), (RAM, 10**5000, SLIDER_MAX_MB), (RAM, 10**6, SLIDER_MAX_MB), (RAM, "abc", 4096),
    (RAM, [512], 4096), (RAM, {"mb": 512}, 4096), (RAM, None, 4096), (RAM, True, 4096),
    (RFG, math.inf, 0.3), (RFG, math.nan, 0.3), (RFG, 10**400, 0.3), (RFG, 2, 0.3), (RFG, "abc", 0.3),
    (RFG, [0.5], 0.3), (RFG, None, 0.3), (RFG, True, 0.3),
    (PROFILE, ["exact"], DEFAULT_PROFILE), (PROFILE, {"a": 1}, DEFAULT_PROFILE), (PROFILE, 10**5000, DEFAULT_PROFILE),
    (PROFILE, "nope", DEFAULT_PROFILE), (PROFILE, math.nan, DEFAULT_PROFILE),
    (OVERWRITE, "abc", False), (OVERWRITE, [True], False), (OVERWRITE, None, False), (OVERWRITE, 10**5000, False),
    (OVERWRITE, math.inf, False),
    (BAKE, "abc", True), (BAKE, [False], True), (BAKE, None, True), (BAKE, math.nan, True),
    (FOLDER, 5, None), (FOLDER, ["/tmp/x"], None), (FOLDER, {"a": 1}, None), (FOLDER, 10**5000, None),
    (FOLDER, "/tmp/refs\x00evil", None), (FOLDER, "/tmp/refs\ud800", None),
]
READERS = {RAM: options.ram_budget_mb, RFG: options.default_rfg, PROFILE: options.default_profile,
           OVERWRITE: options.overwrite_default, FOLDER: options.store_folder, BAKE: options.bake_trajectories}


# pytest's own ids would str() 10**5000, which Python refuses
REFUSED_IDS = [f"{key}-{type(value).__name__}-{i}" for i, (key, value, _) in enumerate(REFUSED)]


@pytest.mark.parametrize("key, value, used", REFUSED, ids=REFUSED_IDS)
def test_a_hostile_value_is_replaced_and_reported_once(config, tmp_path, capsys, key, value, used):
    config[key] = value
    used = default_folder(tmp_path) if key == FOLDER else used
    assert READERS[key]() == used
    assert READERS[key]() == used
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("RefDrop: ") and key in line]
    assert len(lines) == 1, out
    assert str(used) in lines[0]


@pytest.mark.parametrize("key, value, used", [
    (RAM, 512, 512), (RAM, 1024.9, 1024), (RAM, "512", 512), (RAM, 0, 0), (RAM, SLIDER_MAX_MB, SLIDER_MAX_MB),
    (RFG, -1, -1.0), (RFG, "0.45", 0.45), (RFG, 0.3, 0.3),
    (PROFILE, "balanced", "balanced"), (PROFILE, "", DEFAULT_PROFILE), (PROFILE, None, DEFAULT_PROFILE),
    (OVERWRITE, True, True), (OVERWRITE, "true", True), (OVERWRITE, False, False),
    (BAKE, False, False), (BAKE, "false", False), (BAKE, True, True),
    (FOLDER, "", None), (FOLDER, "   ", None), (FOLDER, None, None),
])
def test_good_and_empty_values_are_used_silently(config, tmp_path, capsys, key, value, used):
    config[key] = value
    used = default_folder(tmp_path) if key == FOLDER else used
    assert READERS[key]() == used
    assert "RefDrop" not in capsys.readouterr().out


def test_a_chosen_store_folder_is_used(config, tmp_path):
    config[FOLDER] = f"  {tmp_path / 'mine'}  "
    assert options.store_folder() == str(tmp_path / "mine")
    assert options.get_store().root == (tmp_path / "mine").resolve()


def test_a_store_folder_with_nul_opens_the_default_store(config, tmp_path):
    config[FOLDER] = str(tmp_path / "refs\x00evil")
    assert options.get_store().root == (tmp_path / "models" / "RefDrop").resolve()


def test_the_ram_budget_applied_is_clamped(config):
    config[RAM] = math.inf
    options.apply_ram_budget()
    assert RAM_CACHE.budget == SLIDER_MAX_MB * 1024 * 1024


def test_the_extension_loads_with_every_setting_hostile(config, tmp_path, capsys):
    """``refdrop_ram_budget_mb: Infinity`` in config.json used to raise OverflowError while the host imported
    scripts/refdrop.py, and the extension did not load at all."""
    config.update({RAM: math.inf, RFG: math.nan, PROFILE: ["exact"], OVERWRITE: {"x": 1}, FOLDER: "a\x00b"})
    module = fakehost.load_script()
    assert RAM_CACHE.budget == SLIDER_MAX_MB * 1024 * 1024
    assert module.RefDropScript().title() == "RefDrop"
    assert options.get_store().root == (tmp_path / "models" / "RefDrop").resolve()
    out = capsys.readouterr().out
    assert "RefDrop: the setting refdrop_ram_budget_mb = inf" in out


def test_the_extension_loads_with_infinity_read_from_config_json(config, tmp_path):
    """The value as the host's json.load gives it from the file's text."""
    import json

    config.update(json.loads('{"refdrop_ram_budget_mb": Infinity, "refdrop_default_rfg": -Infinity}'))
    fakehost.load_script()
    assert RAM_CACHE.budget == SLIDER_MAX_MB * 1024 * 1024
    assert options.default_rfg() == 0.3
