"""ConvNormAct: torchvision's conv -> norm -> activation block whose BatchNorm is folded into the
convolution at inference.

In eval mode a BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals one convolution
with the weight scaled by ``gamma / sqrt(var + eps)`` and a shifted bias. Folding it on the fly
saves a pass over every output map (and the ReLU then runs in place), while the parameters,
buffers and state-dict keys stay those of ``Conv2dNormActivation`` (``0.weight``,
``1.running_mean``, ...): checkpoints, converters and training are untouched. Folding costs one
multiply over the weight per call, a few milliseconds against the convolution's seconds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops import Conv2dNormActivation

__all__ = ['ConvNormAct', 'fold_batch_norm']


def fold_batch_norm(conv: nn.Conv2d, norm: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the one convolution equal to ``norm(conv(x))`` with ``norm`` using its
    running statistics (eval mode).

    Args:
        conv: the convolution, with or without a bias.
        norm: a BatchNorm with running statistics, affine or not.
    """
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError(f'fold_batch_norm: {type(norm).__name__} has no running statistics '
                         '(track_running_stats=False); it cannot be folded')
    scale = torch.rsqrt(norm.running_var + norm.eps)
    shift = -norm.running_mean * scale
    if norm.weight is not None:
        scale = scale * norm.weight
        shift = shift * norm.weight + norm.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    # (C_out,) scale broadcast over (C_out, C_in / groups, kh, kw)
    return conv.weight * scale.reshape(-1, 1, 1, 1), shift


class ConvNormAct(Conv2dNormActivation):
    """``Conv2dNormActivation`` (same arguments and state dict) whose BatchNorm is folded into
    the convolution in eval mode; in training mode it is exactly the torchvision block.

    The folded path applies when the block is conv (zeros padding) -> a BatchNorm with running
    statistics -> an optional ReLU; any other composition runs unchanged.
    """

    def _foldable(self) -> bool:
        if self.training or len(self) not in (2, 3):
            return False
        conv, norm = self[0], self[1]
        return (type(conv) is nn.Conv2d and conv.padding_mode == 'zeros'
                and isinstance(norm, _BatchNorm) and norm.running_mean is not None
                and (len(self) == 2 or isinstance(self[2], nn.ReLU)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._foldable():
            return super().forward(x)
        conv = self[0]
        weight, bias = fold_batch_norm(conv, self[1])
        out = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return F.relu_(out) if len(self) == 3 else out
