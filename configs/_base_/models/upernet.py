# UperNet (Xiao et al. 2018): UPerHead on s4..s32 and an FCN auxiliary head on s16 (weight 0.4),
# on any backbone (or backbone + neck) that gives those maps; Swin-T here. Method configs swap
# `model.backbone` (with `_delete_=True`) and nothing else.
# As mmseg's UperNet configs: synchronized BatchNorm in both heads (SyncBN shares the batch
# statistics of all processes; on one process it is plain BatchNorm), cross-entropy averaged over
# all pixels of the batch, ignored ones included (mmseg's avg_non_ignore=False default), and
# training crops padded to 512x512 once, after normalisation (image 0, labels 255); test images
# are not padded.
model = dict(
    type='Segmentor',
    data_preprocessor=dict(type='SegDataPreprocessor', mean=(123.675, 116.28, 103.53),
                           std=(58.395, 57.12, 57.375), size=(512, 512), seg_pad_val=255),
    backbone=dict(type='Swin', arch='tiny', window_size=7, drop_path_rate=0.3),
    decode_head=dict(type='UPerHead', in_features=('s4', 's8', 's16', 's32'), channels=512,
                     pool_scales=(1, 2, 3, 6), dropout_ratio=0.1, num_classes=150,
                     norm_layer='SyncBN',
                     loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0,
                                      avg_non_ignore=False)),
    auxiliary_head=dict(type='FCNHead', in_features=('s16',), channels=256, num_convs=1,
                        dropout_ratio=0.1, num_classes=150, norm_layer='SyncBN',
                        loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4,
                                         avg_non_ignore=False)),
    test_cfg=dict(mode='whole'))
