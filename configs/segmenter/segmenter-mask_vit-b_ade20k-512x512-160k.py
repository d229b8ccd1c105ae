# Segmenter, ViT-B/16 (AugReg ImageNet-21k, 384) + mask transformer decoder (2 layers, d_model
# 768, 12 heads, dropout 0.1), ADE20K 512x512, 160k iterations, batch 8, SGD (official recipe).
# Target: 48.5 mIoU single-scale (50.0 multi-scale), Seg-B-Mask/16, Segmenter paper (Strudel et
# al., ICCV 2021), comparison with the state of the art on ADE20K (check the table number).
_base_ = './segmenter-linear_vit-b_ade20k-512x512-160k.py'
model = dict(
    decode_head=dict(_delete_=True, type='SegmenterMaskHead', in_features=('s16',),
                     num_classes=150, channels=768, num_heads=12, num_layers=2,
                     dropout_ratio=0.1, drop_path_rate=0.0, input_norm=False))
