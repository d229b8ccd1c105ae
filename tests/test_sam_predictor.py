"""SamPredictor on official-layout SAM weights against segment-anything's own predictor."""
import numpy as np
import pytest
import torch
from segment_anything import SamPredictor as ReferencePredictor
from segment_anything import sam_model_registry

from densevit.apis import SamPredictor, init_model
from densevit.checkpoint import get_converter, load_state_dict

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def predictors():
    torch.manual_seed(0)
    sam = sam_model_registry['vit_b']().eval()
    with torch.no_grad():  # SAM zero-inits its rel-pos tables and no-mask embedding
        for name, p in sam.named_parameters():
            if 'rel_pos' in name or 'no_mask_embed' in name:
                p.normal_(0, 0.02)
    ours = init_model('configs/sam/sam_vit-b.py')
    report = load_state_dict(ours, get_converter('sam')(sam.state_dict()), log=False)
    assert not report.missing and not report.unexpected and not report.resized
    rng = np.random.default_rng(0)
    # a smooth image, so its resize and the predictions are not noise
    yy, xx = np.mgrid[0:300, 0:400]
    image = np.stack([xx * 255 // 400, yy * 255 // 300, (xx + yy) % 256], -1).astype(np.uint8)
    image = np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)
    reference, predictor = ReferencePredictor(sam), SamPredictor(ours)
    reference.set_image(image)
    predictor.set_image(image)
    return reference, predictor


PROMPTS = {
    'point': dict(point_coords=np.array([[200.0, 150.0]]), point_labels=np.array([1])),
    'points with a negative': dict(point_coords=np.array([[200.0, 150.0], [50.5, 260.0]]),
                                   point_labels=np.array([1, 0])),
    'box': dict(box=np.array([80.0, 40.0, 330.0, 250.0])),
    'point and box': dict(point_coords=np.array([[120.0, 100.0]]), point_labels=np.array([1]),
                          box=np.array([80.0, 40.0, 330.0, 250.0])),
}


def test_embedding_equals_segment_anything(predictors):
    reference, predictor = predictors
    assert predictor.input_size == reference.input_size == (768, 1024)
    assert predictor.original_size == reference.original_size == (300, 400)
    torch.testing.assert_close(predictor.get_image_embedding(),
                               reference.get_image_embedding(), atol=1e-4, rtol=0)


def _assert_same(ours, ref):
    masks, iou, low_res = ours
    ref_masks, ref_iou, ref_low_res = ref
    assert masks.shape == ref_masks.shape and masks.dtype == ref_masks.dtype
    np.testing.assert_allclose(low_res, ref_low_res, atol=1e-4, rtol=0)
    np.testing.assert_allclose(iou, ref_iou, atol=1e-4, rtol=0)
    assert (masks == ref_masks).all()


@pytest.mark.parametrize('multimask', [True, False])
@pytest.mark.parametrize('prompt', sorted(PROMPTS))
def test_predict_equals_segment_anything(predictors, prompt, multimask):
    reference, predictor = predictors
    ours = predictor.predict(**PROMPTS[prompt], multimask_output=multimask)
    ref = reference.predict(**PROMPTS[prompt], multimask_output=multimask)
    assert ours[0].shape == ((3 if multimask else 1), 300, 400)
    assert ours[2].shape == ((3 if multimask else 1), 256, 256)
    _assert_same(ours, ref)


def test_mask_input_and_logits_equal_segment_anything(predictors):
    reference, predictor = predictors
    first = reference.predict(**PROMPTS['point'], multimask_output=True)
    mask_input = first[2][np.argmax(first[1])][None]  # (1, 256, 256): the best mask's logits
    kwargs = dict(point_coords=np.array([[200.0, 150.0], [300.0, 60.0]]),
                  point_labels=np.array([1, 1]), mask_input=mask_input, multimask_output=False)
    ours = predictor.predict(**kwargs, return_logits=True)
    ref = reference.predict(**kwargs, return_logits=True)
    assert ours[0].dtype == np.float32
    np.testing.assert_allclose(ours[0], ref[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours[1], ref[1], atol=1e-4, rtol=0)


def test_predict_torch_many_boxes_equals_segment_anything(predictors):
    reference, predictor = predictors
    boxes = torch.tensor([[10.0, 20.0, 100.0, 200.0], [80.0, 40.0, 330.0, 250.0],
                          [0.0, 0.0, 400.0, 300.0]])
    ours = predictor.predict_torch(None, None, predictor.transform.apply_boxes_torch(
        boxes, predictor.original_size), multimask_output=False)
    ref = reference.predict_torch(None, None, reference.transform.apply_boxes_torch(
        boxes, reference.original_size), multimask_output=False)
    assert ours[0].shape == (3, 1, 300, 400)
    _assert_same([t.numpy() for t in ours], [t.numpy() for t in ref])
    # each box alone gives the same as in the batch
    single = predictor.predict(box=boxes[1].numpy(), multimask_output=False)
    np.testing.assert_allclose(single[2], ours[2][1].numpy(), atol=1e-5, rtol=0)
