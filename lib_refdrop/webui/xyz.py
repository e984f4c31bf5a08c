"""Axes for the built-in X/Y/Z plot: "[RefDrop] RFG coefficient", "[RefDrop] Reference", "[RefDrop] Mode",
"[RefDrop] Step end", and for the further references "[RefDrop] RFG coefficient (slot 2)", "(slot 3)" and
"[RefDrop] Reference (slot 2)", "(slot 3)".

An axis only overrides values of the RefDrop panel; it does not switch RefDrop on. A grid with a RefDrop axis
while the panel is off is refused with a message (otherwise every cell would silently look the same). Put 0 on
the RFG axis to get a plain baseline cell (c = 0 is exactly a generation without RefDrop). A slot's reference axis
needs that slot on (its coefficient not 0, in the panel or on its own axis): otherwise every cell is refused with
a message, since none would use the reference.

The apply function stores the value on the per-cell copy of ``p`` (``p.refdrop_xyz``); the script hands it to
``settings.for_generation`` with the panel's values, so axis values are validated with them, like any other input.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from .. import TITLE
from ..errors import RefDropError
from ..params import MODES, SLOTS, build, parse_mode, parse_rfg, wants_refdrop

PREFIX = "[RefDrop]"
XYZ_MODULE_NAMES = ("xyz_grid.py", "xy_grid.py")


def override(p, name: str, value) -> None:
    """Record one axis value on the cell's ``p`` (a fresh dict: cells are shallow copies of one ``p``)."""
    p.refdrop_xyz = {**(getattr(p, "refdrop_xyz", None) or {}), name: value}


def overrides(p) -> dict:
    return dict(getattr(p, "refdrop_xyz", None) or {})


def _apply(name: str) -> Callable:
    def apply(p, x, xs):
        override(p, name, x)

    return apply


def panel_enabled(p) -> bool | None:
    """Whether the RefDrop panel of this generation asks for RefDrop (None if its values cannot be found)."""
    runner = getattr(p, "scripts", None)
    for script in getattr(runner, "alwayson_scripts", None) or []:
        if script.title() == TITLE:
            try:
                return wants_refdrop(p.script_args[script.args_from:script.args_to])
            except (TypeError, AttributeError):
                return None
    return None


def _require_enabled(p) -> None:
    if panel_enabled(p) is False:
        raise RuntimeError(
            "RefDrop: the [RefDrop] X/Y/Z axes only change RefDrop's values; enable RefDrop in its panel first "
            "(use RFG coefficient 0 for a cell without RefDrop)"
        )


def _confirm_each(check: Callable) -> Callable:
    def confirm(p, xs):
        _require_enabled(p)
        for x in xs:
            try:
                check(x)
            except RefDropError as exc:
                raise RuntimeError(str(exc)) from None

    return confirm


def make_axes(axis_option_class, get_store: Callable) -> list:
    """The AxisOption objects (``axis_option_class`` is the X/Y/Z script's ``AxisOption``)."""

    def check_reference(name):
        store = get_store()
        if not store.exists(name):
            raise RefDropError(store.missing_message(name))

    def check_step_end(x):
        build({"step_end": x})

    return [
        axis_option_class(f"{PREFIX} RFG coefficient", float, _apply("rfg"),
                          confirm=_confirm_each(parse_rfg)),
        axis_option_class(f"{PREFIX} Reference", str, _apply("reference"), confirm=_confirm_each(check_reference),
                          choices=lambda: list(get_store().names())),
        axis_option_class(f"{PREFIX} Mode", str, _apply("mode"), confirm=_confirm_each(parse_mode),
                          choices=lambda: list(MODES)),
        axis_option_class(f"{PREFIX} Step end", float, _apply("step_end"), confirm=_confirm_each(check_step_end)),
        *(axis for k in SLOTS[1:] for axis in (
            axis_option_class(f"{PREFIX} RFG coefficient (slot {k})", float, _apply(f"rfg_{k}"),
                              confirm=_confirm_each(partial(parse_rfg, name=f"rfg_{k}"))),
            axis_option_class(f"{PREFIX} Reference (slot {k})", str, _apply(f"reference_{k}"),
                              confirm=_confirm_each(check_reference), choices=lambda: list(get_store().names())),
        )),
    ]


def find_xyz_module(scripts_data):
    for data in scripts_data or []:
        if data.script_class.__module__ in XYZ_MODULE_NAMES and hasattr(data, "module"):
            return data.module
    return None


def register(get_store: Callable) -> bool:
    """Add the axes to the X/Y/Z plot once; True if they are there afterwards. Safe to call repeatedly."""
    try:
        from modules import scripts
    except ImportError:
        return False
    module = find_xyz_module(getattr(scripts, "scripts_data", None))
    if module is None:
        return False
    if any(str(opt.label).startswith(PREFIX) for opt in module.axis_options):
        return True
    module.axis_options.extend(make_axes(module.AxisOption, get_store))
    return True
