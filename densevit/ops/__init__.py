"""Tensor ops with no dependency on the rest of densevit."""
from .deformable_attention import MultiScaleDeformableAttention, multi_scale_deformable_attention
from .neighborhood_attention import na2d
from .sync_batchnorm import SyncBatchNorm

__all__ = ['na2d', 'multi_scale_deformable_attention', 'MultiScaleDeformableAttention',
           'SyncBatchNorm']
