"""PromptableSegmenter on a tiny backbone: construction checks, SamDataPreprocessor, the
predictor's bad-input errors and conversions; any backbone under the SAM decoder."""
import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData

from densevit.apis import SamPredictor
from densevit.apis.sam_predictor import as_rgb_uint8
from densevit.registry import MODELS
from densevit.structures import DataSample

TINY_DECODER = dict(transformer_mlp_dim=64, iou_head_hidden_dim=32, transformer_num_heads=2)


def tiny_model(**overrides) -> torch.nn.Module:
    cfg = dict(type='PromptableSegmenter', image_size=64,
               backbone=dict(type='ViT', arch='tiny', embed_dim=32, depth=2, num_heads=2,
                             global_attn_indexes=(1,), img_size=64, pretrain_img_size=64,
                             window_size=2),
               neck=dict(type='SamNeck', out_channels=32), mask_decoder=TINY_DECODER)
    cfg.update(overrides)
    torch.manual_seed(0)
    return MODELS.build(cfg).eval()


@pytest.fixture(scope='module')
def predictor():
    predictor = SamPredictor(tiny_model())
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    return predictor


def test_geometry_follows_the_embedding_map():
    model = tiny_model()
    assert model.embedding_size == (4, 4)
    assert model.prompt_encoder.mask_input_size == (16, 16)
    low_res, iou = model.decode(torch.zeros(1, 32, 4, 4), boxes=torch.tensor([[0., 0., 30., 20.]]))
    assert low_res.shape == (1, 3, 16, 16) and iou.shape == (1, 3)


def test_swin_backbone_feeds_the_decoder_through_a_neck_chain():
    swin = dict(type='Swin', embed_dim=24, depths=(1, 1, 1, 1),
                num_heads=(1, 2, 3, 4), window_size=4)
    model = tiny_model(backbone=swin, neck=[dict(type='SamNeck', in_feature='s16',
                                                 out_channels=32)])
    assert isinstance(model.neck, torch.nn.ModuleList)
    embedding = model.image_embedding(torch.zeros(1, 3, 64, 64))
    assert embedding.shape == (1, 32, 4, 4)
    low_res, _ = model.decode(embedding, point_coords=torch.tensor([[[10., 10.]]]),
                              point_labels=torch.tensor([[1]]), multimask_output=False)
    assert low_res.shape == (1, 1, 16, 16)


@pytest.mark.parametrize('overrides, error, words', [
    (dict(in_feature='s8'), KeyError, "in_feature 's8'"),
    (dict(image_size=72), ValueError, 'image_size 72 is not a multiple of the stride 16'),
    (dict(mask_decoder=dict(transformer_depht=2)), KeyError, 'transformer_depht'),
    (dict(prompt_encoder=dict(embed_dim=8)), KeyError, 'embed_dim'),
    (dict(data_preprocessor=dict(type='SamDataPreprocessor', image_size=128)), ValueError,
     'data_preprocessor image_size 128'),
])
def test_bad_settings_are_named(overrides, error, words):
    with pytest.raises(error, match=words):
        tiny_model(**overrides)


def test_data_preprocessor_resizes_longest_side_and_gt_in_training():
    model = tiny_model()
    image = torch.randint(0, 255, (3, 30, 20), dtype=torch.uint8)
    sample = DataSample(metainfo=dict(ori_shape=(30, 20), img_shape=(30, 20)))
    gt = InstanceData()
    gt.bboxes = torch.tensor([[2., 3., 10., 15.]])
    gt.masks = torch.zeros(1, 30, 20, dtype=torch.bool)
    gt.masks[0, 3:15, 2:10] = True
    gt.labels = torch.tensor([0])
    sample.gt_instances = gt
    out = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), True)
    sample = out['data_samples'][0]  # the preprocessor moves samples to the device: a copy
    gt = sample.gt_instances
    # segment-anything's rounding: 30x20 -> 64 x 42.67 -> (64, 43)
    assert sample.img_shape == (64, 43) and out['inputs'].shape == (1, 3, 64, 64)
    assert sample.scale_factor == pytest.approx((43 / 20, 64 / 30))
    assert (out['inputs'][0, :, :, 43:] == 0).all() and (out['inputs'][0, :, :, :43] != 0).any()
    torch.testing.assert_close(gt.bboxes, torch.tensor([[2 * 43 / 20, 3 * 64 / 30,
                                                          10 * 43 / 20, 15 * 64 / 30]]))
    assert gt.masks.shape == (1, 64, 64)
    ys, xs = torch.nonzero(gt.masks[0], as_tuple=True)
    assert abs(ys.min().item() - 3 * 64 / 30) <= 1 and abs(xs.max().item() + 1 - 10 * 43 / 20) <= 1


def test_predict_before_set_image_and_without_prompt_are_named():
    predictor = SamPredictor(tiny_model())
    with pytest.raises(RuntimeError, match='call set_image'):
        predictor.predict(point_coords=np.array([[1., 1.]]), point_labels=np.array([1]))
    predictor.set_image(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match='needs a prompt'):
        predictor.predict()
    predictor.reset_image()
    with pytest.raises(RuntimeError, match='call set_image'):
        predictor.get_image_embedding()


def test_bad_prompts_are_named(predictor):
    with pytest.raises(ValueError, match=r'\[\[90.0, 10.0\]\] lie outside the image of width 80'):
        predictor.predict(point_coords=np.array([[5., 5.], [90., 10.]]),
                          point_labels=np.array([1, 1]))
    with pytest.raises(ValueError, match='outside the image'):
        predictor.predict(box=np.array([0., 0., 10., 60.]))
    with pytest.raises(ValueError, match='2 point_coords but point_labels of shape \\(3,\\)'):
        predictor.predict(point_coords=np.array([[5., 5.], [6., 6.]]),
                          point_labels=np.array([1, 1, 0]))
    with pytest.raises(ValueError, match='got only point_coords'):
        predictor.predict(point_coords=np.array([[5., 5.]]))
    with pytest.raises(ValueError, match=r'need point_labels of shape \(2, 1\)'):
        predictor.predict_torch(torch.zeros(2, 1, 2), torch.zeros(2, 2))


def test_predict_shapes_in_original_pixels(predictor):
    masks, iou, low_res = predictor.predict(point_coords=np.array([[40., 20.]]),
                                            point_labels=np.array([1]))
    assert masks.shape == (3, 48, 80) and masks.dtype == bool
    assert iou.shape == (3,) and low_res.shape == (3, 16, 16)
    assert predictor.input_size == (38, 64)


@pytest.mark.parametrize('image, expected', [
    (np.full((4, 5), 7, np.uint8), np.full((4, 5, 3), 7, np.uint8)),
    (np.full((4, 5, 1), 7, np.uint8), np.full((4, 5, 3), 7, np.uint8)),
    (np.dstack([np.full((4, 5, 3), 9, np.uint8), np.zeros((4, 5), np.uint8)]),
     np.full((4, 5, 3), 9, np.uint8)),
    (np.full((4, 5, 3), 65535, np.uint16), np.full((4, 5, 3), 255, np.uint8)),
    (np.full((4, 5, 3), 257 * 10, np.uint16), np.full((4, 5, 3), 10, np.uint8)),
    (np.full((4, 5, 3), 0.5, np.float32), np.full((4, 5, 3), 128, np.uint8)),
])
def test_images_are_converted_not_crashed_on(image, expected, predictor):
    np.testing.assert_array_equal(as_rgb_uint8(image), expected)
    predictor.set_image(image)
    assert predictor.original_size == (4, 5)
    predictor.set_image(np.zeros((48, 80, 3), np.uint8))


def test_bgr_is_reversed_and_non_images_are_refused():
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0] = 200  # blue in BGR
    assert (as_rgb_uint8(bgr, 'BGR')[..., 2] == 200).all()
    with pytest.raises(ValueError, match="image_format must be 'RGB' or 'BGR'"):
        as_rgb_uint8(bgr, 'HSV')
    with pytest.raises(ValueError, match=r'shape \(2, 2, 5\)'):
        as_rgb_uint8(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ValueError, match=r'values in \[0, 1\]'):
        as_rgb_uint8(np.full((2, 2, 3), 3.0))
