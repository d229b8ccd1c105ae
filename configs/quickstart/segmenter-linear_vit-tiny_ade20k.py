# Segmenter's linear decoder on a small plain ViT (patch 8), trained from scratch on the synthetic
# ADE20K stand-in on CPU: the smallest end-to-end model of a plain ViT, a check of the spine.
# Reaches val mIoU 7.4 on the stand-in (16 epochs): a from-scratch ViT learns little in this
# budget; the UperNet quickstart (ResNet-18) reaches 36.2.
_base_ = [
    '../_base_/default_runtime.py',
    '../_base_/datasets/ade20k_quickstart.py',
    '../_base_/schedules/quickstart_cpu.py',
]
model = dict(
    type='Segmentor',
    # training crops (at most 128x128; RandomCrop does not pad) padded to 128 after normalisation
    data_preprocessor=dict(type='SegDataPreprocessor', size=(128, 128), size_divisor=8),
    backbone=dict(type='ViT', arch='tiny', depth=6, patch_size=8, pretrain_img_size=128,
                  window_size=0, global_attn_indexes=(), use_rel_pos=False, drop_path_rate=0.0),
    decode_head=dict(type='SegmenterLinearHead', in_features=('s8',), num_classes=150),
    test_cfg=dict(mode='whole'))

default_hooks = dict(
    logger=dict(interval=10, log_metric_by_epoch=True),
    checkpoint=dict(by_epoch=True, interval={{_base_.max_epochs}}, max_keep_ckpts=1))
log_processor = dict(by_epoch=True)
