"""The entry script validates script args and X/Y/Z overrides once (settings.for_generation), with one parse_bool."""

from __future__ import annotations

import pytest
import test_script
from test_script import SAMPLE, new_p, run_hook

from lib_refdrop.errors import RefDropError
from lib_refdrop.webui import xyz
from tests.support.fakehost.objects import sample_patched

host, diffusion_model = test_script.host, test_script.diffusion_model  # the fixtures of test_script.py


@pytest.mark.parametrize("args", [[{"enabled": 1, "rfg": 7}], [{"enabled": "maybe"}], [1, "Use", 7]])
def test_an_invalid_request_that_asks_for_refdrop_stops_with_its_message(host, diffusion_model, args):
    """``enabled: 1`` asks for RefDrop as ``true`` does; an "enabled" that is no boolean is itself the error."""
    script = host.script_module.RefDropScript()
    p, _ = new_p(host, diffusion_model)
    run_hook(script, p, args)
    with pytest.raises(RefDropError, match="^RefDrop: "):
        sample_patched(p.sd_model.forge_objects.unet, **SAMPLE)


def test_an_xyz_value_replaces_an_invalid_panel_value_of_its_cell(host, diffusion_model):
    script = host.script_module.RefDropScript()
    p, _ = new_p(host, diffusion_model)
    xyz.override(p, "rfg", 0.5)
    script.before_process(p, {"coefficient": 7, "reference": "r"})
    assert p.refdrop_run is not None and p.refdrop_run.settings.rfg == 0.5
