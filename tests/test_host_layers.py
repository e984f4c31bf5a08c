"""patcher/unet_layers.py: an attn1 layer of a host U-Net by layer id, laid out as both hosts lay out their U-Nets
(``input_blocks[n]`` / ``middle_block`` / ``output_blocks[n]``, each a sequence of modules of which one has
``transformer_blocks``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lib_refdrop.errors import RefDropError
from lib_refdrop.patcher.unet_layers import attn1_module, layer_widths_of, projections_of


class _Attention(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k, self.to_v = nn.Linear(width, width, bias=False), nn.Linear(width, width, bias=False)


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.attn1, self.attn2 = _Attention(width), _Attention(width)


class _SpatialTransformer(nn.Module):
    def __init__(self, width: int, depth: int):
        super().__init__()
        self.transformer_blocks = nn.ModuleList(_Block(width) for _ in range(depth))


def _unet() -> nn.Module:
    unet = nn.Module()
    unet.input_blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 8, 3)),
                                       nn.Sequential(nn.Conv2d(8, 8, 3), _SpatialTransformer(8, 1))])
    unet.middle_block = nn.Sequential(nn.Conv2d(8, 8, 3), _SpatialTransformer(8, 2), nn.Conv2d(8, 8, 3))
    unet.output_blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 8, 3)),
                                        nn.Sequential(nn.Conv2d(8, 8, 3), _SpatialTransformer(8, 3))])
    return unet


def test_a_layer_id_names_the_attn1_the_hosts_patch_of_that_key_runs_in():
    unet = _unet()
    assert attn1_module(unet, "input1.0") is unet.input_blocks[1][1].transformer_blocks[0].attn1
    assert attn1_module(unet, "middle0.1") is unet.middle_block[1].transformer_blocks[1].attn1
    assert attn1_module(unet, "output1.2") is unet.output_blocks[1][1].transformer_blocks[2].attn1


@pytest.mark.parametrize("lid", ["input0.0", "input7.0", "middle0.5", "output1.3"])
def test_a_layer_the_model_does_not_have_is_named(lid):
    with pytest.raises(RefDropError, match=f"no self-attention layer {lid}"):
        attn1_module(_unet(), lid)


def test_projections_are_the_layers_own_modules_looked_up_once():
    unet = _unet()
    patcher = type("Patcher", (), {})()
    patcher.model = type("Model", (), {})()
    patcher.model.diffusion_model = unet
    projections = projections_of(patcher)
    to_k, to_v = projections("output1.1")
    attn1 = unet.output_blocks[1][1].transformer_blocks[1].attn1
    assert to_k is attn1.to_k and to_v is attn1.to_v
    patcher.model.diffusion_model = None  # a second lookup of the same layer does not walk the model again
    assert projections("output1.1")[0] is to_k
    x = torch.randn(5, 8)
    assert torch.equal(to_k(x), x @ attn1.to_k.weight.T)


def test_layer_widths_are_the_models_and_none_where_it_has_no_such_layer():
    """What a Use checks a reference's layers against before reading a slot (issue 18, item 2)."""
    patcher = type("Patcher", (), {})()
    patcher.model = type("Model", (), {})()
    patcher.model.diffusion_model = _unet()
    widths = layer_widths_of(patcher)
    assert [widths(lid) for lid in ("input1.0", "middle0.1", "output1.2")] == [8, 8, 8]
    assert [widths(lid) for lid in ("input7.0", "middle0.5", "double3.0", "input99.0")] == [None] * 4
    patcher.model.diffusion_model = None  # a stand-in without U-Net blocks: nothing to check against
    assert layer_widths_of(patcher) is None


def test_flux_layer_widths_are_its_blocks_hidden_size():
    from lib_refdrop.dit.layers import layer_widths_of as flux_widths

    block = type("Block", (), {"hidden_size": 3072})()
    model = type("Flux", (), {"double_blocks": [block] * 19, "single_blocks": [block] * 38})()
    widths = flux_widths(model)
    assert widths("double18.0") == widths("single37.0") == 3072
    assert [widths(lid) for lid in ("double19.0", "single38.0", "double1.1", "input1.0")] == [None] * 4
