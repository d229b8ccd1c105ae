# Segmenter (Strudel et al. 2021): a plain ViT-B/16 with global attention everywhere and its final
# LayerNorm (the decoder reads normalised tokens, so the head's own input_norm is off), the linear
# decoder on the stride-16 tokens, sliding-window test with 512 windows at stride 512 (official).
# The AugReg ViTs it starts from were trained at 384 and normalise with mean = std = 127.5.
model = dict(
    type='Segmentor',
    data_preprocessor=dict(type='SegDataPreprocessor', mean=(127.5, 127.5, 127.5),
                           std=(127.5, 127.5, 127.5), size=(512, 512), seg_pad_val=255),
    backbone=dict(type='ViT', arch='base', img_size=512, pretrain_img_size=384, window_size=0,
                  global_attn_indexes=(), use_rel_pos=False, final_norm=True,
                  drop_path_rate=0.1),
    decode_head=dict(type='SegmenterLinearHead', in_features=('s16',), num_classes=150,
                     input_norm=False, loss_decode=dict(type='CrossEntropyLoss')),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(512, 512), batch_size=4))
