"""hostsim: drive an attn1 replace patch exactly the way Forge / reForge do, around a random-weight diffusers U-Net.

See tests/test_hostsim.py for the checks against the recorded host traces (shared/host-traces).
"""

from .host import AttnHost, RecordingPatch, host_attention, sdpa_attention, tome_groups
from .sampling import SAMPLERS, call_model, make_conds, sample
from .schedule import DiscreteSchedule
from .traces import extra_options_of, load_trace, replay_calls, split_forwards, traces_dir
from .unet import LayerInfo, layer_map, make_unet, unet_arch

__all__ = [
    "AttnHost", "DiscreteSchedule", "LayerInfo", "RecordingPatch", "SAMPLERS", "call_model", "extra_options_of",
    "host_attention", "layer_map", "load_trace", "make_conds", "make_unet", "replay_calls", "sample",
    "sdpa_attention", "split_forwards", "tome_groups", "traces_dir", "unet_arch",
]
