# SAM ViT-B image encoder: ViT-B/16 at 1024x1024, 14x14 windows, global attention in blocks
# 2, 5, 8, 11, decomposed relative position bias, position embedding trained at 1024 (64x64),
# and SAM's 256-channel neck. Load official weights with densevit.checkpoint.vit.convert_sam.
model = dict(
    type='ImageEncoder',
    backbone=dict(
        type='ViT',
        arch='base',
        img_size=1024,
        pretrain_img_size=1024,
        patch_size=16,
        window_size=14,
        global_attn_indexes=(2, 5, 8, 11),
        use_rel_pos=True,
        qkv_bias=True,
        drop_path_rate=0.0),
    neck=dict(type='SamNeck', out_channels=256))
