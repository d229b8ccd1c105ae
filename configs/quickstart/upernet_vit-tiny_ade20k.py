# UperNet on a small plain ViT with ViTDet's simple feature pyramid, trained from scratch on the
# synthetic ADE20K stand-in on CPU (make demo). Target on the stand-in val split: mIoU >= 60.
# No auxiliary head: at 150 classes the loss on full-resolution logits costs as much as the
# model, and the CPU budget is better spent on epochs.
_base_ = [
    '../_base_/default_runtime.py',
    '../_base_/datasets/ade20k_quickstart.py',
    '../_base_/schedules/quickstart_cpu.py',
]
model = dict(
    type='Segmentor',
    data_preprocessor=dict(type='SegDataPreprocessor', size_divisor=32),
    backbone=dict(type='ViT', arch='tiny', depth=6, patch_size=16, pretrain_img_size=128,
                  window_size=0, global_attn_indexes=(), use_rel_pos=False, drop_path_rate=0.0),
    neck=dict(type='SimpleFeaturePyramid', out_channels=64, scale_factors=(4.0, 2.0, 1.0, 0.5)),
    decode_head=dict(type='UPerHead', in_features=('s4', 's8', 's16', 's32'), channels=64,
                     num_classes=150),
    test_cfg=dict(mode='whole'))

default_hooks = dict(
    logger=dict(interval=10, log_metric_by_epoch=True),
    checkpoint=dict(by_epoch=True, interval={{_base_.max_epochs}}, max_keep_ckpts=1))
log_processor = dict(by_epoch=True)
