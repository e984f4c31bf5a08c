"""hostsim: drive an attn1 replace patch exactly the way Forge / reForge do, around a random-weight diffusers U-Net.

What is only the tests' lives here: ``AttnHost`` (the hosts' own ``extra_options`` keys, per-layer patches, token
merging) and the recorded host traces (shared/host-traces; tests/test_hostsim.py checks the host against them). The
rest is re-exported: the library's diffusers host (lib_refdrop/diffusers.py), SD's schedule, the samplers and the
random-weight U-Nets (devmodel/).
"""

from devmodel.sampling import SAMPLERS, make_conds, model_call, sample
from devmodel.schedule import DiscreteSchedule
from devmodel.unets import make_unet, unet_arch
from lib_refdrop.diffusers import LayerInfo, layer_map

from .host import AttnHost, RecordingPatch, host_attention, sdpa_attention, tome_groups
from .traces import extra_options_of, load_trace, replay_calls, split_forwards, traces_dir

__all__ = [
    "AttnHost", "DiscreteSchedule", "LayerInfo", "RecordingPatch", "SAMPLERS", "extra_options_of", "host_attention",
    "layer_map", "load_trace", "make_conds", "make_unet", "model_call", "replay_calls", "sample", "sdpa_attention",
    "split_forwards", "tome_groups", "traces_dir", "unet_arch",
]
