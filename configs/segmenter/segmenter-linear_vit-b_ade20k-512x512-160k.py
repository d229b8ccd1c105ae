# Segmenter, ViT-B/16 (AugReg ImageNet-21k, 384) + linear decoder, ADE20K 512x512, 160k
# iterations, batch 8, SGD as the official recipe.
# Target: about 47 mIoU single-scale for ViT-B/16 + linear decoder, the Segmenter paper's decoder
# ablation (Strudel et al., ICCV 2021; check the exact table value before quoting).
# Backbone weights: python tools/convert_checkpoint.py timm_vit \
#     vit_base_patch16_384.augreg_in21k_ft_in1k.pth checkpoints/vit_base_patch16_384_densevit.pth
_base_ = [
    '../_base_/models/segmenter_vit.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/segmenter_sgd_160k.py',
]
model = dict(backbone_checkpoint='checkpoints/vit_base_patch16_384_densevit.pth')

# Batch 8 as published: 1 image per GPU on 8 GPUs (scale to your setup).
train_dataloader = dict(batch_size=1)
