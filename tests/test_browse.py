"""``densevit browse``: N pictures per task family (ADE20K, COCO detection, COCO with LSJ, SAM),
each the original beside the pipeline's output, with the annotations drawn; one bad input."""
import glob
import json
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from densevit.cli import main as cli
from densevit.datasets.metainfo import COCO_PALETTE

from .conftest import ROOT

CONFIGS = {
    'ade20k': 'configs/quickstart/upernet_resnet18_ade20k.py',
    'coco': 'configs/quickstart/dino_vit-tiny_coco.py',
    'coco-lsj': 'configs/dino/dino-mask_r50_coco-lsj-1024-50e.py',
    'sam': 'configs/quickstart/sam_vit-tiny_coco.py',
}
GAP = 4  # side_by_side's default gap


def _browse(family, root, out, *extra):
    return cli(['browse', osp.join(ROOT, CONFIGS[family]), '--data-root', root, '-n', '2',
                '--out', str(out), '--min-side', '0', *extra])


def _source(root: str, picture: str) -> np.ndarray:
    """The original image a picture (``<split>_<index>_<stem>.png``) was made from."""
    stem = osp.basename(picture).split('_', 2)[2][:-len('.png')]
    found = glob.glob(osp.join(root, '**', f'{stem}.jpg'), recursive=True)
    assert len(found) == 1, found
    return np.asarray(Image.open(found[0]).convert('RGB'))


@pytest.mark.parametrize('family', list(CONFIGS))
def test_browse_writes_n_side_by_side_pictures(family, ade20k_root, coco_root, tmp_path):
    root = ade20k_root if family == 'ade20k' else coco_root
    assert _browse(family, root, tmp_path) == 0
    pictures = sorted(glob.glob(str(tmp_path / '*.png')))
    assert len(pictures) == 2
    for picture in pictures:
        drawn = np.asarray(Image.open(picture).convert('RGB'))
        original = _source(root, picture)
        h, w = original.shape[:2]
        rest = drawn.shape[1] - w - GAP  # the pipeline's panel (and a legend for ADE20K)
        if family in ('coco', 'sam'):  # no resize in these pipelines: the same size twice
            assert rest == w
        elif family == 'coco-lsj':  # jittered and cropped to at most 1024
            assert 0 < rest <= 1024 and drawn.shape[0] > h
        else:  # cropped to at most 128 wide, plus the legend
            assert rest > 0
        assert drawn.std() > 10


def test_browse_draws_the_annotations_on_the_original(coco_root, tmp_path):
    assert _browse('coco', coco_root, tmp_path, '--split', 'val', '--seed', '1') == 0
    ann = json.load(open(osp.join(coco_root, 'annotations/instances_val2017.json')))
    cat_ids = sorted(c['id'] for c in ann['categories'])
    checked = 0
    for picture in sorted(glob.glob(str(tmp_path / '*.png'))):
        drawn = np.asarray(Image.open(picture).convert('RGB'))
        original = _source(coco_root, picture)
        h, w = original.shape[:2]
        header = drawn.shape[0] - h  # the titles above the panels
        left = drawn[header:, :w]
        assert (left != original).any(axis=2).mean() > 0.05  # masks and boxes change pixels
        image_id = int(osp.basename(picture).split('_', 2)[2][:-4])
        boxes = [a for a in ann['annotations'] if a['image_id'] == image_id and not a['iscrowd']]
        assert boxes
        # the bottom edge of every box carries a class colour of some box there
        colours = {COCO_PALETTE[cat_ids.index(a['category_id'])] for a in boxes}
        for a in boxes:
            x, y, bw, bh = a['bbox']
            row, col = int(y + bh), int(x + bw / 2)
            if row < h:
                assert tuple(left[row, col]) in colours, (a, tuple(left[row, col]))
                checked += 1
    assert checked >= 2


def test_unknown_split_is_refused(coco_root, tmp_path, capsys):
    assert _browse('coco', coco_root, tmp_path, '--split', 'tran') == 2
    assert "invalid choice: 'tran'" in capsys.readouterr().err
    assert not glob.glob(str(tmp_path / '*.png'))


def test_config_without_the_split_is_named(coco_root, tmp_path, capsys):
    config = osp.join(ROOT, 'configs/quickstart/dino-sam_vit-tiny_coco.py')
    assert cli(['browse', config, '--data-root', coco_root, '--out', str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'no train_dataloader dataset; it has test' in err
