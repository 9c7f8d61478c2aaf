"""Shared by the torch shrink tests: the masked reference of hidden-channel removal."""

import torch
import torch.nn.functional as F
from torch import nn


class KeptLayerNorm(nn.Module):
    """LayerNorm over the kept channels only; removed channels output 0 (the masked model
    of hidden-channel removal: plain LayerNorm would also average the zeros)."""

    def __init__(self, ln, keep):
        super().__init__()
        self.ln, self.keep = ln, torch.as_tensor(keep)

    def forward(self, x):
        y = torch.zeros_like(x)
        k = self.keep
        y[..., k] = F.layer_norm(x[..., k], (len(k),), self.ln.weight[k], self.ln.bias[k],
                                 self.ln.eps)
        return y
