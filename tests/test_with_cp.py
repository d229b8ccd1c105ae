"""Activation checkpointing (``with_cp``) of the ViT, Swin and NAT / DiNAT blocks: a training step
gives the same outputs and the same gradients (every parameter and the input) as the plain run,
and the blocks really are recomputed (each block's forward runs twice in training with gradients,
once otherwise). NAT's backward on CPU is densevit's own na2d backward, run here inside the
recomputation."""
import pytest
import torch

import densevit.models  # noqa: F401  (registers the modules)
from densevit.registry import MODELS

# Tiny models, no stochastic depth; sizes that no window or patch divides, so the padding paths
# run in the recomputed blocks too.
CONFIGS = {
    'vit': (dict(type='ViT', arch='tiny', embed_dim=32, depth=3, num_heads=2, window_size=4,
                 global_attn_indexes=(1,), img_size=64, pretrain_img_size=64, patch_size=8,
                 drop_path_rate=0.0, layer_scale=0.5), (56, 48)),
    'swin': (dict(type='Swin', arch='tiny', embed_dim=16, depths=(2, 2), num_heads=(1, 2),
                  window_size=4, drop_path_rate=0.0, out_indices=(0, 1)), (40, 36)),
    'dinat': (dict(type='DiNAT', arch='mini', embed_dim=16, depths=(2, 3), num_heads=(1, 2),
                   kernel_size=3, dilations=[[1, 3], [1, 2, 1]], drop_path_rate=0.0,
                   layer_scale=0.5, out_indices=(0, 1)), (44, 36)),
}


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    if hasattr(model, 'blocks'):  # ViT
        return list(model.blocks)
    stages = model.layers if hasattr(model, 'layers') else model.levels  # Swin, NAT
    return [block for stage in stages for block in stage.blocks]


def _step(model: torch.nn.Module, images: torch.Tensor, weights: dict) -> tuple:
    """Forward, a fixed random linear loss of every map, backward; returns the maps, the input's
    gradient and every parameter's gradient, and how many block forwards started (a
    pre-hook on the first norm: a recomputation stops once it has what the backward needs)."""
    calls = []
    hooks = [b.norm1.register_forward_pre_hook(lambda *_: calls.append(1))
             for b in _blocks(model)]
    images = images.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    outputs = model(images)
    sum((outputs[k] * weights[k]).sum() for k in sorted(outputs)).backward()
    for hook in hooks:
        hook.remove()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return {k: v.detach() for k, v in outputs.items()}, images.grad.clone(), grads, len(calls)


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_with_cp_gives_the_plain_gradients(name):
    cfg, (height, width) = CONFIGS[name]
    torch.manual_seed(0)
    plain = MODELS.build(cfg).train()
    checkpointed = MODELS.build(dict(cfg, with_cp=True)).train()
    checkpointed.load_state_dict(plain.state_dict())
    with torch.no_grad():  # zero-initialised tables (relative position) get values that matter
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        checkpointed.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        shapes = {k: v.shape for k, v in plain(images).items()}
    weights = {k: torch.randn(s, generator=torch.Generator().manual_seed(2))
               for k, s in shapes.items()}

    out_p, gin_p, grads_p, calls_p = _step(plain, images, weights)
    out_c, gin_c, grads_c, calls_c = _step(checkpointed, images, weights)
    num_blocks = len(_blocks(plain))
    assert calls_p == num_blocks
    assert calls_c == 2 * num_blocks  # every block recomputed in the backward pass
    for k in out_p:
        torch.testing.assert_close(out_c[k], out_p[k], rtol=0, atol=1e-6)
    torch.testing.assert_close(gin_c, gin_p, rtol=1e-5, atol=1e-6)
    assert grads_c.keys() == grads_p.keys()
    for k in grads_p:
        assert grads_p[k].abs().sum() > 0, f'{name}: {k} got no gradient'
        torch.testing.assert_close(grads_c[k], grads_p[k], rtol=1e-5, atol=1e-6, msg=k)

    # not in eval mode, nor without gradients: one forward per block
    calls = []
    hooks = [b.norm1.register_forward_pre_hook(lambda *_: calls.append(1))
             for b in _blocks(checkpointed)]
    with torch.no_grad():
        checkpointed(images)
    checkpointed.eval()(images).popitem()[1].sum().backward()
    for hook in hooks:
        hook.remove()
    assert len(calls) == 2 * num_blocks
