# Segmenter's linear decoder on a small plain ViT (patch 8), trained from scratch on the synthetic
# ADE20K stand-in on CPU: the smallest end-to-end model, a check of the spine.
_base_ = './upernet_vit-tiny_ade20k.py'
model = dict(
    _delete_=True,
    type='Segmentor',
    data_preprocessor=dict(type='SegDataPreprocessor', size_divisor=8),
    backbone=dict(type='ViT', arch='tiny', depth=6, patch_size=8, pretrain_img_size=128,
                  window_size=0, global_attn_indexes=(), use_rel_pos=False, drop_path_rate=0.0),
    decode_head=dict(type='SegmenterLinearHead', in_features=('s8',), num_classes=150),
    test_cfg=dict(mode='whole'))
