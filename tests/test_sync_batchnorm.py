"""densevit.ops.SyncBatchNorm: on two CPU processes (gloo) each holding half a batch, outputs,
input gradients, summed parameter gradients and running statistics equal torch's BatchNorm2d on
the whole batch in one process; with no process group it is BatchNorm2d."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from densevit.ops import SyncBatchNorm

CHANNELS = 3


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    # channel offsets far from 0 check the variance is not E[x^2] - E[x]^2 in float32
    x = torch.randn(4, CHANNELS, 5, 6, generator=generator) * 2 + torch.tensor(
        [0.0, 100.0, -3.0]).view(1, CHANNELS, 1, 1)
    upstream = torch.randn(4, CHANNELS, 5, 6, generator=generator)
    return x, upstream


def _layer(cls) -> nn.Module:
    layer = cls(CHANNELS, momentum=0.3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    return layer


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world_size)
    try:
        x, upstream = _batch()
        part = slice(rank * 2, rank * 2 + 2)  # this process's half of the batch
        x = x[part].clone().requires_grad_(True)
        layer = _layer(SyncBatchNorm).train()
        for _ in range(2):  # two steps: the running statistics follow the momentum
            out = layer(x)
        (out * upstream[part]).sum().backward()
        torch.save(dict(out=out.detach(), x_grad=x.grad, weight_grad=layer.weight.grad,
                        bias_grad=layer.bias.grad, running_mean=layer.running_mean,
                        running_var=layer.running_var,
                        num_batches_tracked=layer.num_batches_tracked),
                   os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_batchnorm_over_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / 'init'), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(2)]

    x, upstream = _batch()
    x.requires_grad_(True)
    reference = _layer(nn.BatchNorm2d).train()
    for _ in range(2):
        out = reference(x)
    (out * upstream).sum().backward()

    torch.testing.assert_close(torch.cat([r['out'] for r in ranks]), out.detach())
    torch.testing.assert_close(torch.cat([r['x_grad'] for r in ranks]), x.grad)
    # DDP would sum (then average) the parameter gradients of the processes
    torch.testing.assert_close(ranks[0]['weight_grad'] + ranks[1]['weight_grad'],
                               reference.weight.grad)
    torch.testing.assert_close(ranks[0]['bias_grad'] + ranks[1]['bias_grad'],
                               reference.bias.grad)
    for r in ranks:
        torch.testing.assert_close(r['running_mean'], reference.running_mean)
        torch.testing.assert_close(r['running_var'], reference.running_var)
        assert int(r['num_batches_tracked']) == 2


def test_without_a_process_group_it_is_batchnorm():
    assert not dist.is_initialized()
    x, _ = _batch()
    sync, plain = _layer(SyncBatchNorm), _layer(nn.BatchNorm2d)
    torch.testing.assert_close(sync.train()(x), plain.train()(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)
    torch.testing.assert_close(sync.eval()(x), plain.eval()(x))
    assert sync.state_dict().keys() == plain.state_dict().keys()
    with pytest.raises(ValueError, match='SyncBN'):
        from densevit.models.heads.base import norm_layer_type
        norm_layer_type('SyncBn', 'UPerHead')
