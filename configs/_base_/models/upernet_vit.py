# UperNet on a plain ViT-B/16 (ViTDet-style windowed attention with 4 global blocks), made
# multi-scale by ViTDet's simple feature pyramid (x4, x2, x1, x0.5 -> s4..s32).
model = dict(
    type='Segmentor',
    data_preprocessor=dict(type='SegDataPreprocessor', mean=(123.675, 116.28, 103.53),
                           std=(58.395, 57.12, 57.375), size=(512, 512), seg_pad_val=255),
    backbone=dict(type='ViT', arch='base', img_size=512, pretrain_img_size=224, window_size=14,
                  use_rel_pos=True, drop_path_rate=0.1),
    neck=dict(type='SimpleFeaturePyramid', out_channels=768, scale_factors=(4.0, 2.0, 1.0, 0.5)),
    decode_head=dict(type='UPerHead', in_features=('s4', 's8', 's16', 's32'), channels=512,
                     pool_scales=(1, 2, 3, 6), dropout_ratio=0.1, num_classes=150,
                     loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
    auxiliary_head=dict(type='FCNHead', in_features=('s16',), channels=256, num_convs=1,
                        dropout_ratio=0.1, num_classes=150,
                        loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4)),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341), batch_size=4))
