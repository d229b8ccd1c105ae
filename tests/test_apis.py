"""init_model / inference_model: predictions at the original image size, from a path or an array,
equal to what the model's own test step gives through the dataset pipeline."""
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

from densevit.apis import inference_model, init_model

from .conftest import ROOT

CONFIG = osp.join(ROOT, 'configs/quickstart/segmenter-linear_vit-tiny_ade20k.py')


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return init_model(CONFIG, cfg_options={'model.backbone.depth': 1})


def test_path_and_array_give_the_same_prediction(model, ade20k_root):
    path = osp.join(ade20k_root, 'images/validation/ADE_val_00000001.jpg')
    image = np.asarray(Image.open(path).convert('RGB'))
    from_path = inference_model(model, path)
    from_array = inference_model(model, image)
    assert tuple(from_path.pred_sem_seg.data.shape) == (1, *image.shape[:2])
    assert torch.equal(from_path.pred_sem_seg.data, from_array.pred_sem_seg.data)
    assert from_path.seg_logits.data.shape[0] == 150
    both = inference_model(model, [path, image])
    assert len(both) == 2 and torch.equal(both[1].pred_sem_seg.data, from_array.pred_sem_seg.data)


def test_bad_array_is_named(model):
    with pytest.raises(ValueError, match=r'RGB uint8 array.*float64'):
        inference_model(model, np.zeros((8, 8, 3)))


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        init_model(CONFIG, str(tmp_path / 'nope.pth'))
