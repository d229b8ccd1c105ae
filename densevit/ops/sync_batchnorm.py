"""BatchNorm with statistics shared by every process of a distributed run, on CPU too.

torch's ``nn.SyncBatchNorm`` cannot train on CPU: its forward raises "SyncBatchNorm expected
input tensor to be on GPU" under a process group, and DistributedDataParallel refuses any module
holding one ("SyncBatchNorm layers only work with GPU modules"), a subclass included. A gloo run
on CPU could then not train the recipes that use SyncBN (mmseg's UperNet / FCN heads), so
``SyncBatchNorm`` here is a BatchNorm of its own: in training, under a process group of more
than one process, the batch mean and variance are all-reduced with ``torch.distributed`` (an
autograd-aware sum, so gradients reach every process's input as with torch's kernel); on any
device, since ``dist.all_reduce`` runs on gloo and NCCL alike. With no process group (one
process) or in eval mode it is plain BatchNorm.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['SyncBatchNorm', 'all_reduce_sum']


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum is the sum of the gradients. (torch's own
    differentiable ``torch.distributed.nn.functional.all_reduce`` is deprecated, and the
    functional collectives that replace it have no autograd for all_reduce.)"""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce_sum(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """``tensor`` summed over the processes of ``group`` (default: all), differentiably."""
    return _AllReduceSum.apply(tensor, group)


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over the batches of all processes; (B, C, ...) inputs of any dimension.

    Same arguments, parameters and buffers as ``torch.nn.SyncBatchNorm`` (checkpoints move
    between the two and BatchNorm2d).

    Synchronised, the statistics take two passes over the global batch: the mean from the
    all-reduced per-channel sums and counts, then the biased variance from the all-reduced sums
    of squared deviations (no ``E[x^2] - E[x]^2`` cancellation). The running variance takes the
    unbiased estimate over the global count, as BatchNorm does over its batch.

    Args:
        num_features: channels C.
        eps: added to the variance.
        momentum: running-statistics factor (None: cumulative average).
        affine: learn a per-channel scale and shift.
        track_running_stats: keep running mean and variance for eval.
        process_group: the processes to synchronise over (default: all).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group=None, device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f'SyncBatchNorm expects a (B, C, ...) input, got {input.dim()}-d')

    def _sync_group(self):
        """The process group to synchronise over on this call, or None for plain BatchNorm."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group or dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self._sync_group()
        if group is None:
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        x = input.float()  # statistics in float32 also under bfloat16 / float16 autocast
        channels = x.shape[1]
        dims = [0] + list(range(2, x.ndim))  # every dim but the channels
        shape = [1, channels] + [1] * (x.ndim - 2)  # (C,) -> (1, C, 1, ...)
        count = x.new_full((1,), x.numel() / channels)
        # (C + 1,): per-channel sums and this process's per-channel count, summed over processes
        sums = all_reduce_sum(torch.cat([x.sum(dims), count]), group)
        total = sums[-1].detach()
        mean = sums[:-1] / total
        centered = x - mean.view(shape)
        var = all_reduce_sum((centered * centered).sum(dims), group) / total
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                unbiased = var * (total / (total - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out.to(input.dtype)
