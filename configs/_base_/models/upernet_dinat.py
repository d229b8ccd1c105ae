# UperNet on DiNAT-T (Hassani & Shi 2022) with the official ADE20K dilations (the backbone's
# feature maps are 128x128 .. 16x16 for 512x512 crops).
model = dict(
    type='Segmentor',
    data_preprocessor=dict(type='SegDataPreprocessor', mean=(123.675, 116.28, 103.53),
                           std=(58.395, 57.12, 57.375), size=(512, 512), seg_pad_val=255),
    backbone=dict(type='DiNAT', arch='tiny', kernel_size=7, drop_path_rate=0.3,
                  dilations=[[1, 16, 1], [1, 4, 1, 8],
                             [1, 2, 1, 3, 1, 4, 1, 2, 1, 3, 1, 4, 1, 2, 1, 3, 1, 4],
                             [1, 2, 1, 2, 1]]),
    decode_head=dict(type='UPerHead', in_features=('s4', 's8', 's16', 's32'), channels=512,
                     pool_scales=(1, 2, 3, 6), dropout_ratio=0.1, num_classes=150,
                     loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
    auxiliary_head=dict(type='FCNHead', in_features=('s16',), channels=256, num_convs=1,
                        dropout_ratio=0.1, num_classes=150,
                        loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4)),
    test_cfg=dict(mode='whole'))
