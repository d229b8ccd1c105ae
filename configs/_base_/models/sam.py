# SAM (segment-anything): ViT image encoder at 1024x1024 with 14x14 windows, global attention in
# four blocks, decomposed relative position bias, SamNeck to 256 channels at stride 16 (a 64x64
# embedding); segment-anything's PromptEncoder and MaskDecoder (TwoWayTransformer of depth 2,
# 8 heads, MLP 2048; 3 multimask outputs; IoU head of depth 3). Each size overrides `arch`.
model = dict(
    type='PromptableSegmenter',
    image_size=1024,
    in_feature='s16',
    backbone=dict(
        type='ViT',
        arch='base',
        img_size=1024,
        pretrain_img_size=1024,
        patch_size=16,
        window_size=14,
        use_rel_pos=True,
        qkv_bias=True,
        drop_path_rate=0.0),
    neck=dict(type='SamNeck', out_channels=256),
    data_preprocessor=dict(type='SamDataPreprocessor', image_size=1024,
                           mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]))
