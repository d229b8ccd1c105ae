"""densevit's Deformable DETR equals transformers' ``DeformableDetrForObjectDetection`` on the same
weights: the reference is built with seeded random weights (timm ResNet-50 backbone, no download),
its state dict goes through the ``deformable_detr`` converter into
``Detector(TimmBackbone resnet50, ChannelMapper + 1 extra level, DeformableDETR)`` with an empty
load report, and both run in eval mode on one padded batch of two images of different sizes (the
batch and its padding mask made by densevit's DetDataPreprocessor). Logits and boxes of every
decoder layer and the two-stage proposal scores agree to 1e-4.

The transformers model is the reference package's own structure with fewer layers and queries
(the config options transformers offers); every other size is the published one (d_model 256,
8 heads, 4 levels, 4 points, FFN 1024)."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip('transformers')

from densevit.checkpoint.detr import convert_deformable_detr  # noqa: E402
from densevit.checkpoint.loading import load_state_dict  # noqa: E402
from densevit.models.heads.detr import deformable_detr  # noqa: E402,F401  (registers the head)
from densevit.models.tasks.det_data_preprocessor import padding_mask  # noqa: E402
from densevit.models.tasks.detector import Detector  # noqa: E402
from densevit.structures import DataSample  # noqa: E402

NUM_LABELS, ENC_LAYERS, DEC_LAYERS, QUERIES = 5, 2, 3, 100
IMAGE_SIZES = [(160, 224), (113, 150)]  # (h, w); padded to (192, 256), a multiple of 64
ATOL = 1e-4


def reference_model(two_stage: bool, with_box_refine: bool):
    config = transformers.DeformableDetrConfig(
        use_timm_backbone=True, backbone='resnet50', use_pretrained_backbone=False,
        two_stage=two_stage, with_box_refine=with_box_refine, encoder_layers=ENC_LAYERS,
        decoder_layers=DEC_LAYERS, num_queries=QUERIES, two_stage_num_proposals=QUERIES,
        num_labels=NUM_LABELS)
    torch.manual_seed(0)
    model = transformers.DeformableDetrForObjectDetection(config).eval()
    # the published initialisation zeroes the box heads' last layers, the class biases and
    # timm's last BN of every block; move every tensor off it so that each of them matters
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not t.is_floating_point():
                continue
            if name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith('running_mean'):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            else:
                t.add_(torch.randn(t.shape, generator=g) * 0.02)
    return model


def densevit_model(two_stage: bool, with_box_refine: bool) -> Detector:
    criterion = dict(type='SetCriterion', matcher=dict(type='HungarianMatcher'),
                     enc_class_agnostic=two_stage)
    return Detector(
        backbone=dict(type='TimmBackbone', model_name='resnet50', out_indices=(2, 3, 4)),
        neck=dict(type='ChannelMapper', in_features=('s8', 's16', 's32'), num_extra_levels=1),
        head=dict(type='DeformableDETR', num_classes=NUM_LABELS, criterion=criterion,
                  num_encoder_layers=ENC_LAYERS, num_decoder_layers=DEC_LAYERS,
                  num_queries=QUERIES, two_stage=two_stage,
                  with_box_refine=with_box_refine)).eval()


def padded_batch(model: Detector):
    """Two uint8 images of different sizes through densevit's preprocessor: the normalised batch
    padded at the bottom / right, its samples (img_shape) and the (B, Hp, Wp) padding mask."""
    g = torch.Generator().manual_seed(2)
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
              for h, w in IMAGE_SIZES]
    samples = [DataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
               for h, w in IMAGE_SIZES]
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), False)
    inputs = data['inputs']
    mask = padding_mask(data['data_samples'], tuple(inputs.shape[-2:]))
    return inputs, data['data_samples'], mask


@pytest.mark.parametrize('two_stage,with_box_refine', [
    (True, True),
    pytest.param(False, False, marks=pytest.mark.slow),
    pytest.param(False, True, marks=pytest.mark.slow),
])
def test_matches_transformers_deformable_detr(two_stage, with_box_refine):
    reference = reference_model(two_stage, with_box_refine)
    ours = densevit_model(two_stage, with_box_refine)
    report = load_state_dict(ours, convert_deformable_detr(reference.state_dict()), log=False)
    assert report.clean and not report.resized, str(report)

    inputs, samples, mask = padded_batch(ours)
    assert tuple(inputs.shape[-2:]) == (192, 256) and mask[1].sum() > 0 and mask[0].sum() > 0
    with torch.no_grad():
        # transformers' pixel_mask: 1 = image, 0 = padding
        expected = reference(pixel_values=inputs, pixel_mask=(~mask).long())
        got = ours(inputs, samples, mode='tensor')

    assert got['logits'].shape == expected.logits.shape == (2, QUERIES, NUM_LABELS)
    torch.testing.assert_close(got['logits'], expected.logits, rtol=0, atol=ATOL)
    torch.testing.assert_close(got['boxes'], expected.pred_boxes, rtol=0, atol=ATOL)
    # every decoder layer: class logits from transformers' own heads on its hidden states
    for layer, aux in enumerate(got['aux']):
        hidden = expected.intermediate_hidden_states[:, layer]
        torch.testing.assert_close(aux['logits'], reference.class_embed[layer](hidden),
                                   rtol=0, atol=ATOL)
        if with_box_refine:  # the refined reference after layer l is layer l's box
            torch.testing.assert_close(aux['boxes'],
                                       expected.intermediate_reference_points[:, layer],
                                       rtol=0, atol=ATOL)
    if two_stage:
        torch.testing.assert_close(got['enc']['logits'], expected.enc_outputs_class,
                                   rtol=0, atol=ATOL)
        valid = expected.enc_outputs_coord_logits.isfinite()  # padded / edge tokens are +inf
        torch.testing.assert_close(got['enc']['boxes'][valid],
                                   expected.enc_outputs_coord_logits.sigmoid()[valid],
                                   rtol=0, atol=ATOL)


@pytest.mark.slow
def test_matches_transformers_on_one_unpadded_image():
    """Evaluation of one image whose sides are not multiples of 32, nothing padded (the official
    code pads only to the largest image of a batch; densevit's preprocessor here likewise)."""
    reference = reference_model(True, True)
    ours = densevit_model(True, True)
    ours.data_preprocessor.size_divisor = None  # pad to the batch's largest image only
    load_state_dict(ours, convert_deformable_detr(reference.state_dict()), log=False)
    image = torch.randint(0, 256, (3, 150, 170), generator=torch.Generator().manual_seed(3),
                          dtype=torch.uint8)
    data = ours.data_preprocessor(dict(inputs=[image], data_samples=[DataSample()]), False)
    inputs = data['inputs']
    assert tuple(inputs.shape[-2:]) == (150, 170)
    with torch.no_grad():
        expected = reference(pixel_values=inputs, pixel_mask=torch.ones(1, 150, 170).long())
        got = ours(inputs, data['data_samples'], mode='tensor')
    torch.testing.assert_close(got['logits'], expected.logits, rtol=0, atol=ATOL)
    torch.testing.assert_close(got['boxes'], expected.pred_boxes, rtol=0, atol=ATOL)
