# DINO-4scale (Zhang et al., ICLR 2023) as IDEA-Research/DINO config/DINO/DINO_4scale.py: ResNet-50
# (timm names = torchvision's) gives s8..s32, with FrozenBatchNorm (norm_eval) and the stem and
# layer1 frozen (DINO's backbone.py trains layer2..layer4 only); a ChannelMapper (1x1 conv + GN
# per level, a 3x3 stride-2 conv + GN from the raw s32 map) gives four 256-wide levels s8..s64;
# the DINO head has 900 queries, 6 encoder and 6 decoder layers (FFN 2048, dropout 0, 8 heads,
# 4 points), shared class / box heads, 100 denoising queries (label noise 0.5, box noise 0.4),
# sine positions with temperature 20, focal class loss 1, L1 5, GIoU 2 (matcher costs 2 / 5 / 2),
# and keeps the 300 best (query, class) pairs per image at test time (num_select=300).
# Batches are padded to their largest image, as DETR's NestedTensor (the head masks the padding).
model = dict(
    type='Detector',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=(123.675, 116.28, 103.53),
                           std=(58.395, 57.12, 57.375)),
    backbone=dict(type='TimmBackbone', model_name='resnet50', out_indices=(2, 3, 4),
                  norm_eval=True, frozen_modules=('conv1', 'bn1', 'layer1')),
    neck=dict(type='ChannelMapper', in_features=('s8', 's16', 's32'), out_channels=256,
              num_extra_levels=1),
    head=dict(
        type='DINO', in_features=('s8', 's16', 's32', 's64'), num_classes=80, hidden_dim=256,
        num_queries=900, num_encoder_layers=6, num_decoder_layers=6, ffn_dim=2048, dropout=0.0,
        num_dn=100, dn_label_noise_ratio=0.5, dn_box_noise_scale=0.4, pos_temperature=20.0,
        pos_offset=0.0, share_pred_layers=True,
        criterion=dict(
            type='SetCriterion', weights=dict(cls=1.0, bbox=5.0, giou=2.0),
            matcher=dict(type='HungarianMatcher', class_cost='focal', cost_class=2.0,
                         cost_bbox=5.0, cost_giou=2.0))),
    test_cfg=dict(max_per_img=300))
