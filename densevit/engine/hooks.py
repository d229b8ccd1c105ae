"""Hooks used by the tools: drawing predictions to files (``densevit test --show-dir``; the
drawing itself is densevit.visualization's)."""
from __future__ import annotations

import os.path as osp
import re

import numpy as np
from mmengine.hooks import Hook
from mmengine.utils import mkdir_or_exist
from PIL import Image

from densevit.datasets.transforms import read_image
from densevit.registry import HOOKS
from densevit.visualization import draw_instances, draw_sem_seg

__all__ = ['ShowResultHook', 'draw_sem_seg', 'draw_instances', 'safe_file_stem', 'UniqueStems']


def safe_file_stem(path: str) -> str:
    """A file stem made from ``path`` that cannot leave the folder it is written in.

    Only the last path component counts (``../../x.jpg`` and ``/abs/x.jpg`` give ``x``); any
    character other than letters, digits, ``-``, ``_`` and ``.`` becomes ``_`` and leading dots
    are dropped, so the stem holds no separator and is neither ``.`` nor ``..``.
    """
    name = re.split(r'[\\/]', str(path))[-1]
    stem = osp.splitext(name)[0] if not name.startswith('.') else name
    stem = re.sub(r'[^A-Za-z0-9._-]', '_', stem).lstrip('.')
    return stem or 'image'


class UniqueStems:
    """Distinct safe file stems for image paths: a stem met again gets ``_1``, ``_2``, ..."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, path: str) -> str:
        stem = safe_file_stem(path)
        name, k = stem, 0
        while name in self.used:
            k += 1
            name = f'{stem}_{k}'
        self.used.add(name)
        return name


@HOOKS.register_module()
class ShowResultHook(Hook):
    """Write each test image with its predictions drawn on it to ``out_dir`` (PNG, same stem).

    The file name comes from the image's name only through :func:`safe_file_stem`, so a dataset
    name such as ``../../x.jpg`` or an absolute path is written inside ``out_dir``; a stem met
    twice gets ``_1``, ``_2``, ... rather than overwriting the first picture.

    Args:
        out_dir: folder for the drawings (created).
        score_thr: detections below this score are not drawn.
    """

    def __init__(self, out_dir: str, score_thr: float = 0.3) -> None:
        self.out_dir = out_dir
        self.score_thr = score_thr

    def before_test(self, runner) -> None:
        mkdir_or_exist(self.out_dir)
        self._meta = runner.test_dataloader.dataset.metainfo
        self._stems = UniqueStems()

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        for sample in outputs or []:
            path = sample.metainfo['img_path']
            image = read_image(path)  # upright (EXIF), as the predictions are
            if 'pred_sem_seg' in sample:
                labels = sample.pred_sem_seg.data[0].cpu().numpy().astype(np.int64)
                drawn = draw_sem_seg(image, labels, self._meta.get('palette'),
                                     classes=self._meta.get('classes'))
            elif 'pred_instances' in sample:
                pred = sample.pred_instances
                masks = pred.masks.cpu().numpy().astype(bool) if 'masks' in pred else None
                drawn = draw_instances(image, pred.bboxes.cpu().numpy(),
                                       pred.labels.cpu().numpy(), pred.scores.cpu().numpy(),
                                       self._meta['classes'], self._meta.get('palette'), masks,
                                       self.score_thr)
            else:
                continue
            Image.fromarray(drawn).save(self._out_path(path))

    def _out_path(self, img_path: str) -> str:
        """A new PNG path inside ``out_dir`` for the drawing of ``img_path``."""
        out = osp.join(self.out_dir, f'{self._stems(img_path)}.png')
        root = osp.realpath(self.out_dir)
        if osp.dirname(osp.realpath(out)) != root:  # cannot happen with a safe stem; stay sure
            raise ValueError(f'refusing to write {out}: outside {self.out_dir}')
        return out
