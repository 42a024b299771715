"""Small utilities with LLaVA's names."""

import torch


def disable_torch_init():
    """Skip the default weight initialisation of Linear/LayerNorm: weights are loaded right after."""
    torch.nn.Linear.reset_parameters = lambda self: None
    torch.nn.LayerNorm.reset_parameters = lambda self: None
