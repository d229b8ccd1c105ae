# DETR (Carion et al., ECCV 2020) as facebookresearch/detr main.py defaults: ResNet-50's s32 map
# with FrozenBatchNorm (norm_eval) and the stem and layer1 frozen (backbone.py trains
# layer2..layer4 only), 100 queries, 6 + 6 post-norm layers (FFN 2048, dropout 0.1, 8 heads),
# softmax classes with a no-object class weighted 0.1, losses CE 1, L1 5, GIoU 2 (matcher costs
# 1 / 5 / 2), auxiliary losses on every decoder layer; all 100 queries are kept at test time.
model = dict(
    type='Detector',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=(123.675, 116.28, 103.53),
                           std=(58.395, 57.12, 57.375)),
    backbone=dict(type='TimmBackbone', model_name='resnet50', out_indices=(4,), norm_eval=True,
                  frozen_modules=('conv1', 'bn1', 'layer1')),
    head=dict(
        type='DETR', in_features=('s32',), num_classes=80, hidden_dim=256, num_queries=100,
        num_encoder_layers=6, num_decoder_layers=6, ffn_dim=2048, dropout=0.1,
        criterion=dict(
            type='SetCriterion', class_loss='ce', no_object_weight=0.1,
            weights=dict(cls=1.0, bbox=5.0, giou=2.0),
            matcher=dict(type='HungarianMatcher', class_cost='ce', cost_class=1.0,
                         cost_bbox=5.0, cost_giou=2.0))),
    test_cfg=dict(max_per_img=100))
