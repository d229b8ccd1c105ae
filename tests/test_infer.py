"""``densevit infer`` on the three task families with tiny random-init checkpoints: the overlays
are written and drawn where the predictions are, and the raw predictions equal what the model
gives through densevit.apis (COCO results that pycocotools loads against the ground truth, label
maps equal to inference_model's, SAM RLEs equal to SamPredictor's masks); one bad input each."""
import glob
import json
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from densevit.apis import SamPredictor, inference_model, init_model
from densevit.cli import main as cli
from densevit.datasets.metainfo import ADE20K_PALETTE, COCO_CAT_IDS, ade20k_metainfo, coco_metainfo
from densevit.visualization import NEGATIVE_COLOR, POSITIVE_COLOR

from .conftest import ROOT
from .test_cli import one_error_line

SEG = osp.join(ROOT, 'configs/quickstart/segmenter-linear_vit-tiny_ade20k.py')
DET = osp.join(ROOT, 'configs/quickstart/dino_vit-tiny_coco.py')
SAM = osp.join(ROOT, 'configs/quickstart/sam_vit-tiny_coco.py')
# one block; overlays at the image size (no display enlargement) so pixels compare directly
TINY = ['--min-side', '0', '--cfg-options', 'model.backbone.depth=1']


def _checkpoint(tmp_path_factory, config: str, meta) -> tuple:
    torch.manual_seed(0)
    model = init_model(config, cfg_options={'model.backbone.depth': 1})
    path = str(tmp_path_factory.mktemp('ckpt') / 'model.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': meta}}, path)
    return path, model


@pytest.fixture(scope='module')
def seg(tmp_path_factory):
    return _checkpoint(tmp_path_factory, SEG, ade20k_metainfo())


@pytest.fixture(scope='module')
def det(tmp_path_factory):
    return _checkpoint(tmp_path_factory, DET, coco_metainfo())


@pytest.fixture(scope='module')
def sam(tmp_path_factory):
    return _checkpoint(tmp_path_factory, SAM, None)


def _png(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert('RGB'))


def test_segmentation_label_maps_equal_inference_model_and_overlays_blend_them(seg, ade20k_root,
                                                                              tmp_path):
    checkpoint, model = seg
    folder = osp.join(ade20k_root, 'images/validation')
    out = tmp_path / 'out'
    assert cli(['infer', SEG, checkpoint, folder, '--out', str(out), '--batch-size', '2',
                *TINY]) == 0
    paths = sorted(glob.glob(osp.join(folder, '*.jpg')))
    assert len(paths) == 4
    for start in (0, 2):  # the same batches as the command's
        expected = inference_model(model, paths[start:start + 2])
        for path, sample in zip(paths[start:start + 2], expected):
            stem = osp.splitext(osp.basename(path))[0]
            label_map = np.asarray(Image.open(out / 'pred' / f'{stem}.png'))
            assert label_map.dtype == np.uint8
            np.testing.assert_array_equal(label_map, sample.pred_sem_seg.data[0].numpy())
            # the overlay: half the image, half the class colour, legend to the right
            image = np.asarray(Image.open(path).convert('RGB')).astype(np.float64)
            overlay = _png(out / 'vis' / f'{stem}.png')
            h, w = image.shape[:2]
            assert overlay.shape[0] == h and overlay.shape[1] > w
            blend = (image + np.asarray(ADE20K_PALETTE)[label_map]) / 2
            assert np.abs(overlay[:, :w] - blend).max() <= 1.0
            assert (overlay[:, :w] != image.round()).any(axis=2).mean() > 0.5
            assert overlay[:, w:].std() > 10  # the legend is drawn, not a blank strip


def test_small_images_are_drawn_enlarged_and_predictions_keep_their_size(seg, ade20k_root,
                                                                         tmp_path):
    """--min-side twice the image's shorter side: the overlay is the blend of the image and its
    label map each enlarged by 2 (nearest); the label map PNG stays at the image size."""
    checkpoint, _ = seg
    path = sorted(glob.glob(osp.join(ade20k_root, 'images/validation', '*.jpg')))[0]
    image = np.asarray(Image.open(path).convert('RGB')).astype(np.float64)
    out = tmp_path / 'out'
    assert cli(['infer', SEG, checkpoint, path, '--out', str(out), *TINY, '--min-side',
                str(2 * min(image.shape[:2]))]) == 0
    stem = osp.splitext(osp.basename(path))[0]
    label_map = np.asarray(Image.open(out / 'pred' / f'{stem}.png'))
    assert label_map.shape == image.shape[:2]
    blend = (image + np.asarray(ADE20K_PALETTE)[label_map]) / 2
    big = np.kron(blend, np.ones((2, 2, 1)))  # nearest-neighbour x2, computed independently
    overlay = _png(out / 'vis' / f'{stem}.png')
    h, w = big.shape[:2]
    assert overlay.shape[0] == h and overlay.shape[1] > w
    assert np.abs(overlay[:, :w] - big).max() <= 1.0


def test_detection_results_load_against_the_ground_truth(det, coco_root, tmp_path):
    from pycocotools.coco import COCO
    checkpoint, model = det
    folder = osp.join(coco_root, 'val2017')
    out = tmp_path / 'out'
    assert cli(['infer', DET, checkpoint, osp.join(folder, '*0[12].jpg'), '--out', str(out),
                '--score-thr', '0', *TINY]) == 0
    records = json.load(open(out / 'predictions.json'))
    gt = COCO(osp.join(coco_root, 'annotations/instances_val2017.json'))
    results = gt.loadRes(str(out / 'predictions.json'))
    assert {r['image_id'] for r in records} == set(sorted(gt.getImgIds())[:2])
    assert len(results.getAnnIds()) == len(records)
    assert {r['category_id'] for r in records} <= set(COCO_CAT_IDS)

    path = sorted(glob.glob(osp.join(folder, '*.jpg')))[0]
    image_id = int(osp.splitext(osp.basename(path))[0])
    mine = [r for r in records if r['image_id'] == image_id]
    pred = inference_model(model, path).pred_instances
    assert len(mine) == len(pred.scores) > 0
    np.testing.assert_allclose([r['score'] for r in mine], pred.scores.numpy(), atol=1e-5)
    assert [r['category_id'] for r in mine] == [COCO_CAT_IDS[k] for k in pred.labels.tolist()]
    x1, y1, x2, y2 = pred.bboxes.numpy().T
    np.testing.assert_allclose([r['bbox'] for r in mine],
                               np.stack([x1, y1, x2 - x1, y2 - y1], 1), atol=0.01)
    for record, mask in zip(mine, pred.masks.numpy()):
        np.testing.assert_array_equal(mask_utils.decode(record['segmentation']), mask)
    # the overlay is drawn inside the best box and leaves no pixel of the image unseen
    image = np.asarray(Image.open(path).convert('RGB'))
    overlay = _png(out / 'vis' / f'{osp.splitext(osp.basename(path))[0]}.png')
    assert overlay.shape == image.shape
    best = np.asarray(mine[int(np.argmax([r['score'] for r in mine]))]['bbox']).round().astype(int)
    x, y, w, h = np.maximum(best, 0)
    region = (overlay != image).any(axis=2)[y:y + h + 1, x:x + w + 1]
    assert region.mean() > 0.2 and overlay.std() > 10


def test_sam_masks_equal_the_predictors_and_prompts_are_drawn(sam, coco_root, tmp_path):
    checkpoint, model = sam
    path = sorted(glob.glob(osp.join(coco_root, 'val2017', '*.jpg')))[0]
    out = tmp_path / 'out'
    assert cli(['infer', SAM, checkpoint, path, '--out', str(out), '--points', '20,24',
                '40,30,0', '--boxes', '5,5,50,50', '10,20,60,60', *TINY]) == 0
    records = json.load(open(out / 'masks.json'))
    assert len(records) == 2
    image = np.asarray(Image.open(path).convert('RGB'))
    predictor = SamPredictor(model)
    predictor.set_image(image)
    for record, box in zip(records, ([5, 5, 50, 50], [10, 20, 60, 60])):
        masks, ious, _ = predictor.predict(np.array([[20, 24], [40, 30]]), np.array([1, 0]),
                                           np.array(box), multimask_output=False)
        np.testing.assert_array_equal(mask_utils.decode(record['segmentation']), masks[0])
        assert record['score'] == pytest.approx(float(ious[0]), abs=1e-5)
        assert record['prompt'] == dict(points=[[20, 24, 1], [40, 30, 0]], box=box)
    overlay = _png(out / 'vis' / f'{osp.splitext(osp.basename(path))[0]}.png')
    assert tuple(overlay[24, 20]) == POSITIVE_COLOR and tuple(overlay[30, 40]) == NEGATIVE_COLOR


def test_sam_batched_embeddings_match_set_image(sam, coco_root):
    from densevit.cli.infer import sam_embed
    _, model = sam
    images = [np.asarray(Image.open(p).convert('RGB'))
              for p in sorted(glob.glob(osp.join(coco_root, 'val2017', '*.jpg')))[:2]]
    predictor = SamPredictor(model)
    for (features, original, input_size), image in zip(sam_embed(predictor, images), images):
        predictor.set_image(image)
        assert original == image.shape[:2] and input_size == predictor.input_size
        torch.testing.assert_close(features, predictor.features, atol=1e-5, rtol=1e-5)


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize('bad', ['unreadable image', 'missing checkpoint', 'unknown model type',
                                 'bad point', 'prompts for a detector'])
def test_bad_input_is_one_line(bad, seg, det, ade20k_root, tmp_path, capsys):
    image = osp.join(ade20k_root, 'images/validation/ADE_val_00000001.jpg')
    config, checkpoint, extra, named = SEG, seg[0], [], ()
    if bad == 'unreadable image':
        image = _write(tmp_path / 'broken.jpg', 'not an image')
        named = ('broken.jpg',)
    elif bad == 'missing checkpoint':
        checkpoint = str(tmp_path / 'nope.pth')
        named = ('nope.pth',)
    elif bad == 'unknown model type':
        config = _write(tmp_path / 'typo.py', f'_base_ = [{SEG!r}]\n'
                        'model = dict(type="Segmentr")\n')
        named = ('Segmentr', 'Segmentor')
    elif bad == 'bad point':
        config, checkpoint, extra = SAM, seg[0], ['--points', '10;20']
        named = ("'10;20'",)
    else:
        config, checkpoint, extra = DET, det[0], ['--boxes', '1,2,3,4']
        named = ('--boxes', 'Detector')
    assert cli(['infer', config, checkpoint, image, '--out', str(tmp_path / 'o'), *extra,
                *TINY]) == 1
    one_error_line(capsys, *named)


def test_sam_without_prompts_writes_the_automatic_masks(sam, coco_root, tmp_path, monkeypatch):
    import functools

    import densevit.apis
    from densevit.apis import SamAutomaticMaskGenerator
    checkpoint, model = sam
    # a random model's masks are not stable: keep every mask of a 4 x 4 point grid
    options = dict(points_per_side=4, stability_score_thresh=0.0)
    monkeypatch.setattr(densevit.apis, 'SamAutomaticMaskGenerator',
                        functools.partial(SamAutomaticMaskGenerator, **options))
    path = sorted(glob.glob(osp.join(coco_root, 'val2017', '*.jpg')))[0]
    out = tmp_path / 'out'
    assert cli(['infer', SAM, checkpoint, path, '--out', str(out), '--score-thr', '0',
                *TINY]) == 0
    records = json.load(open(out / 'masks.json'))
    image = np.asarray(Image.open(path).convert('RGB'))
    expected = SamAutomaticMaskGenerator(model, pred_iou_thresh=0.0, **options).generate(image)
    assert len(records) == len(expected) > 0
    expected = sorted(expected, key=lambda r: -r['area'])
    for record, mask in zip(records, expected):
        np.testing.assert_array_equal(mask_utils.decode(record['segmentation']),
                                      mask['segmentation'])
        assert record['prompt']['points'] == [[*map(float, mask['point_coords'][0]), 1]]


@pytest.mark.slow  # two quickstart models built three times, 100 boxes prompted (~30 s)
def test_prompted_instance_segmenter_loads_the_weights_its_config_names(coco_root, tmp_path):
    from pycocotools.coco import COCO
    parts = {}
    for role, config in (('detector', DET), ('segmenter', SAM)):
        torch.manual_seed(0)
        parts[role] = str(tmp_path / f'{role}.pth')
        torch.save({'state_dict': init_model(config).state_dict()}, parts[role])
    config = osp.join(ROOT, 'configs/quickstart/dino-sam_vit-tiny_coco.py')
    options = [f'model.detector={DET}', f'model.segmenter={SAM}',
               f'model.detector_checkpoint={parts["detector"]}',
               f'model.segmenter_checkpoint={parts["segmenter"]}']
    path = sorted(glob.glob(osp.join(coco_root, 'val2017', '*.jpg')))[0]
    out = tmp_path / 'out'
    assert cli(['infer', config, '-', path, '--out', str(out), '--score-thr', '0',
                '--cfg-options', *options]) == 0
    records = json.load(open(out / 'predictions.json'))
    model = init_model(config, cfg_options=dict(o.split('=', 1) for o in options))
    pred = inference_model(model, path).pred_instances
    assert len(records) == len(pred.scores) > 0
    assert [r['category_id'] for r in records] == [COCO_CAT_IDS[k] for k in pred.labels.tolist()]
    for record, mask in zip(records, pred.masks.numpy()):
        np.testing.assert_array_equal(mask_utils.decode(record['segmentation']), mask)
    gt = COCO(osp.join(coco_root, 'annotations/instances_val2017.json'))
    assert len(gt.loadRes(records).getAnnIds()) == len(records)
