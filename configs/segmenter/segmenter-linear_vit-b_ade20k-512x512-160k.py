# Segmenter, ViT-B/16 (AugReg ImageNet-21k, 384) + linear decoder, ADE20K 512x512, 160k
# iterations, batch 8, SGD as the official recipe.
# Target: about 47 mIoU single-scale for ViT-B/16 + linear decoder, the Segmenter paper's decoder
# ablation (Strudel et al., ICCV 2021; check the exact table value before quoting).
# Encoder as the official Segmenter's (segm/model/vit.py, segmenter.py): the class token goes
# through every block and the final norm and is dropped before decoding; the position grid is
# stored at the 512 training size (32x32) and resized bilinearly (the 384 AugReg grid at load,
# other inputs at run time), as Segmenter's resize_pos_embed does.
# Known deviation: LayerNorm eps 1e-6 (timm / AugReg) where Segmenter's blocks use 1e-5.
# Backbone weights (class token kept): python tools/convert_checkpoint.py segmenter \
#     vit_base_patch16_384.augreg_in21k_ft_in1k.pth checkpoints/vit_base_patch16_384_densevit.pth
# An official Segmenter checkpoint (rstrudel/segmenter, encoder + decoder), for tools/test.py:
#   python tools/convert_checkpoint.py segmenter checkpoint.pth checkpoints/seg_base_linear.pth
_base_ = [
    '../_base_/models/segmenter_vit.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/segmenter_sgd_160k.py',
]
model = dict(
    backbone=dict(class_token=True, pos_embed_interpolation='bilinear', pretrain_img_size=512),
    backbone_checkpoint='checkpoints/vit_base_patch16_384_densevit.pth')

# Batch 8 as published: 1 image per GPU on 8 GPUs (scale to your setup).
train_dataloader = dict(batch_size=1)
