"""PromptedInstanceSegmenter: a detector's boxes prompt a promptable segmenter; its masks equal
what segment-anything's prompting flow (densevit's SamPredictor) gives for the same boxes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densevit.apis import SamPredictor
from densevit.registry import MODELS
from densevit.structures import DataSample

DETECTOR = 'configs/quickstart/dino_vit-tiny_coco.py'
SEGMENTER = dict(type='PromptableSegmenter', image_size=128,
                 backbone=dict(type='ViT', arch='tiny', embed_dim=32, depth=2, num_heads=2,
                               global_attn_indexes=(1,), img_size=128, pretrain_img_size=128,
                               window_size=4),
                 neck=dict(type='SamNeck', out_channels=32),
                 mask_decoder=dict(transformer_mlp_dim=64, iou_head_hidden_dim=32,
                                   transformer_num_heads=2))


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return MODELS.build(dict(type='PromptedInstanceSegmenter', detector=DETECTOR,
                             segmenter=SEGMENTER, test_cfg=dict(prompt_batch=7))).eval()


@pytest.fixture(scope='module')
def image():
    # smooth, so a x2 resize there and back changes pixels by rounding only
    yy, xx = np.mgrid[0:96, 0:128]
    img = np.stack([xx * 2, yy * 2, 128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 7.0)], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _predict(model, image, scale=1):
    """Run the model as the test loop would, on ``image`` resized by ``scale`` in the pipeline."""
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    h, w = image.shape[:2]
    if scale != 1:
        tensor = F.interpolate(tensor[None].float(), scale_factor=scale, mode='bilinear',
                               align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
    meta = dict(ori_shape=(h, w), img_shape=tuple(tensor.shape[-2:]),
                scale_factor=(float(scale), float(scale)), img_id=1)
    data = model.data_preprocessor(dict(inputs=[tensor], data_samples=[DataSample(
        metainfo=meta)]), False)
    return model.test_step(dict(inputs=[tensor], data_samples=[DataSample(metainfo=meta)]))[0], \
        data


def _reference_masks(model, image, boxes):
    predictor = SamPredictor(model.segmenter)
    predictor.set_image(image)
    masks, _, _ = predictor.predict_torch(
        None, None, predictor.transform.apply_boxes_torch(boxes, predictor.original_size),
        multimask_output=False)
    return masks[:, 0]


def test_masks_are_the_segmenters_for_the_detectors_boxes(model, image):
    result, _ = _predict(model, image)
    pred = result.pred_instances
    assert len(pred) == 100 and pred.masks.shape == (100, 96, 128)
    assert pred.masks.dtype == torch.bool and pred.masks.any()
    # the image is at the segmenter's size already: no resize anywhere, so exactly equal
    assert (pred.masks == _reference_masks(model, image, pred.bboxes)).all()


def test_a_resizing_pipeline_maps_boxes_and_image_back(model, image):
    result, _ = _predict(model, image, scale=2)
    pred = result.pred_instances
    assert pred.masks.shape == (100, 96, 128)
    reference = _reference_masks(model, image, pred.bboxes)
    # the image went up x2 and back down: pixels differ by rounding, masks only at their edges
    agreement = (pred.masks == reference).float().mean().item()
    # boxes left in the detector's input frame (x2) would prompt elsewhere
    unmapped = _reference_masks(model, image, (pred.bboxes * 2).clamp(max=128))
    assert agreement > 0.99 > (pred.masks == unmapped).float().mean().item()


def test_training_is_refused_and_checkpoints_named(model, image, tmp_path):
    with pytest.raises(ValueError, match='train the detector and the segmenter'):
        model(torch.zeros(1, 3, 32, 32), None, mode='loss')
    with pytest.raises(FileNotFoundError, match='without a last_checkpoint'):
        MODELS.build(dict(type='PromptedInstanceSegmenter', detector=DETECTOR,
                          segmenter=SEGMENTER, segmenter_checkpoint=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="detector config 'nope.py'"):
        MODELS.build(dict(type='PromptedInstanceSegmenter', detector='nope.py',
                          segmenter=SEGMENTER))


def test_weights_load_from_training_work_dirs(model, tmp_path):
    """Checkpoints as the Runner writes them (state_dict + meta + message hub) load by work dir."""
    from mmengine.logging import HistoryBuffer

    from densevit.engine.checkpoint import enable_safe_resume
    enable_safe_resume()
    for role in ('detector', 'segmenter'):
        work_dir = tmp_path / role
        work_dir.mkdir()
        part = getattr(model, role)
        torch.save(dict(state_dict={k: v + 1 for k, v in part.state_dict().items()},
                        message_hub=dict(log_scalars={'loss': HistoryBuffer([1.0], [1])}),
                        meta=dict(epoch=1)), work_dir / 'epoch_1.pth')
        (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_1.pth'))
    torch.manual_seed(0)
    pim = MODELS.build(dict(type='PromptedInstanceSegmenter', detector=DETECTOR,
                            segmenter=SEGMENTER, detector_checkpoint=str(tmp_path / 'detector'),
                            segmenter_checkpoint=str(tmp_path / 'segmenter')))
    for role in ('detector', 'segmenter'):
        for key, value in getattr(pim, role).state_dict().items():
            torch.testing.assert_close(value, getattr(model, role).state_dict()[key] + 1)


@pytest.mark.slow
def test_paired_quickstarts_score_box_and_mask_ap_without_a_checkpoint(tmp_path):
    """tools/test.py on the pairing config: each part's weights from its work dir, no checkpoint
    of the pair's own; CocoMetric scores the detector's boxes and the segmenter's masks."""
    import os.path as osp
    import pickle

    from mmengine.config import Config

    from tools.test import main as test_main
    if not osp.isfile('data/synthetic/coco/annotations/instances_val2017.json'):
        pytest.skip('make data writes the COCO stand-in')
    config = 'configs/quickstart/dino-sam_vit-tiny_coco.py'
    cfg = Config.fromfile(config)
    torch.manual_seed(0)
    for role in ('detector', 'segmenter'):
        part = MODELS.build(Config.fromfile(cfg.model[role]).model)
        work_dir = tmp_path / role
        work_dir.mkdir()
        torch.save(dict(state_dict=part.state_dict()), work_dir / 'epoch_1.pth')
        (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_1.pth'))
    out = tmp_path / 'preds.pkl'
    metrics = test_main([config, '--work-dir', str(tmp_path / 'test'), '--out', str(out),
                         '--cfg-options', f'model.detector_checkpoint={tmp_path / "detector"}',
                         f'model.segmenter_checkpoint={tmp_path / "segmenter"}',
                         'test_dataloader.dataset.indices=3', 'test_dataloader.num_workers=0',
                         'test_dataloader.persistent_workers=False'])
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= set(metrics)
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 3
    for pred in preds:
        masks = pred['pred_instances']['masks']
        assert len(masks) == len(pred['pred_instances']['bboxes']) == 100


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save(dict(state_dict={'backbone.weight': torch.zeros(1)}), path)
    with pytest.raises(ValueError, match=f'segmenter_checkpoint {path} does not fit'):
        MODELS.build(dict(type='PromptedInstanceSegmenter', detector=DETECTOR,
                          segmenter=SEGMENTER, segmenter_checkpoint=str(path)))
