"""Heads: consume named features and produce task outputs and losses."""
from . import detr, fcn, segmenter, upernet  # noqa: F401  (registers modules)
