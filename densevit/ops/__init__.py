"""Tensor ops with no dependency on the rest of densevit."""
from .neighborhood_attention import na2d

__all__ = ['na2d']
