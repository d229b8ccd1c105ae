"""Pictures of predictions and annotations: pure functions from an RGB uint8 image to another,
used by ``densevit infer``, ``densevit browse`` and the test-time ``ShowResultHook``."""
from .draw import (NEGATIVE_COLOR, POSITIVE_COLOR, PROMPT_BOX_COLOR, add_legend, display_factor,
                   draw_boxes, draw_instances, draw_legend, draw_masks, draw_prompts, draw_sam,
                   draw_sem_seg, enlarge, index_color, legend_entries, side_by_side)

__all__ = ['display_factor', 'enlarge', 'index_color', 'draw_boxes', 'draw_masks',
           'draw_instances', 'draw_sem_seg', 'legend_entries', 'draw_legend', 'add_legend',
           'draw_prompts', 'draw_sam', 'side_by_side', 'POSITIVE_COLOR', 'NEGATIVE_COLOR',
           'PROMPT_BOX_COLOR']
