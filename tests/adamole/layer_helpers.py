"""Pieces shared by the AdaMoLE layer tests (imported after their torch/peft importorskip)."""

import math

import torch
from torch import nn

from sparsekit.adamole import AdaMoLEConfig, AdaMoLELinear

# an AdaMoLELinear's parameter names -> the symbols of the loop references
PARAMETER_SYMBOLS = {
    "base_layer.weight": "W0",
    "base_layer.bias": "b0",
    "lora_A.default.weight": "A",
    "lora_B.default.weight": "B",
    "lora_gate.default.weight": "Wg",
    "lora_threshold.default.weight": "Wt",
    "lora_threshold.default.bias": "bt",
}


def hand_made_layer(**cfg):
    """N=2 experts on d=2 with gate = identity and threshold net = 0, so that for a token x:
    p = softmax(x) and tau = sigmoid(0) * tau_max = 0.5 * 1/2 = 0.25. ``cfg``: further
    AdaMoLEConfig options."""
    config = AdaMoLEConfig(num_experts=2, r=1, init_lora_weights=False, **cfg)
    layer = AdaMoLELinear(nn.Linear(2, 2), "default", config=config)
    with torch.no_grad():
        layer.lora_gate["default"].weight.copy_(torch.eye(2))
        layer.lora_threshold["default"].weight.zero_()
        layer.lora_threshold["default"].bias.zero_()
    return layer


# tokens: p = [0.8, 0.2], [0.5, 0.5], [0.1, 0.9]; a = p - 0.25 = [.55, -.05], [.25, .25], [-.15, .65];
# active counts 1, 2, 1
HAND_X = torch.tensor([[[math.log(4.0), 0.0], [0.0, 0.0], [0.0, math.log(9.0)]]])
