# Deformable DETR (Zhu et al., ICLR 2021) as fundamentalvision/Deformable-DETR main.py defaults:
# ResNet-50 s8..s32 with FrozenBatchNorm (norm_eval) and the stem and layer1 frozen (backbone.py
# trains layer2..layer4 only), a ChannelMapper to four 256-wide levels s8..s64, 300 queries,
# 6 + 6 layers (FFN 1024, dropout 0.1, 8 heads, 4 points), focal class loss 2, L1 5, GIoU 2
# (matcher costs 2 / 5 / 2), sine positions (temperature 10000, offset -0.5), top 100
# (query, class) pairs per image at test time. Method configs switch on box refinement and
# two-stage proposals.
model = dict(
    type='Detector',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=(123.675, 116.28, 103.53),
                           std=(58.395, 57.12, 57.375)),
    backbone=dict(type='TimmBackbone', model_name='resnet50', out_indices=(2, 3, 4),
                  norm_eval=True, frozen_modules=('conv1', 'bn1', 'layer1')),
    neck=dict(type='ChannelMapper', in_features=('s8', 's16', 's32'), out_channels=256,
              num_extra_levels=1),
    head=dict(
        type='DeformableDETR', in_features=('s8', 's16', 's32', 's64'), num_classes=80,
        hidden_dim=256, num_queries=300, num_encoder_layers=6, num_decoder_layers=6,
        ffn_dim=1024, dropout=0.1, with_box_refine=False, two_stage=False,
        criterion=dict(
            type='SetCriterion', weights=dict(cls=2.0, bbox=5.0, giou=2.0),
            matcher=dict(type='HungarianMatcher', class_cost='focal', cost_class=2.0,
                         cost_bbox=5.0, cost_giou=2.0))),
    test_cfg=dict(max_per_img=100))
