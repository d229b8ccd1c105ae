# Two-stage Deformable DETR with iterative box refinement, ResNet-50 (ImageNet-1k, torchvision
# weights), COCO, 50 epochs.
# Target: 46.9 box AP (COCO val2017), fundamentalvision/Deformable-DETR README
# ("++ two-stage Deformable DETR", 50 epochs); Deformable DETR paper (Zhu et al., ICLR 2021)
# Table 1: 46.9.
# Recipe (configs/r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage.sh =
# main.py defaults + --with_box_refine --two_stage): DETR multi-scale augmentation, total batch
# 32 (16 GPUs x 2), AdamW lr 2e-4, weight decay 1e-4, backbone lr 2e-5 and sampling-offset lr
# 2e-5 (x0.1, lr_linear_proj_mult), clip 0.1, 50 epochs with lr x0.1 after epoch 40;
# FrozenBatchNorm everywhere and the ResNet stem and layer1 frozen (norm_eval, frozen_modules in
# the base model).
# Backbone weights (torchvision's IMAGENET1K_V1, loaded when training starts):
#   python tools/convert_checkpoint.py resnet resnet50-0676ba61.pth \
#       checkpoints/resnet50_densevit.pth
# Released model, for tools/test.py:
#   python tools/convert_checkpoint.py deformable_detr \
#       r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage-checkpoint.pth \
#       checkpoints/deformable-detr-refine-twostage_r50_coco-50e.pth
_base_ = [
    '../_base_/models/deformable_detr_r50.py',
    '../_base_/datasets/coco_detr.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/detr_adamw_50e.py',
]
model = dict(head=dict(with_box_refine=True, two_stage=True),
             backbone_checkpoint='checkpoints/resnet50_densevit.pth')

# (the official reference_points also get x0.1; two-stage models have none)
optim_wrapper = dict(optimizer=dict(lr=2e-4),
                     paramwise_cfg=dict(custom_keys={'sampling_offsets': dict(lr_mult=0.1)}))

train_dataloader = dict(batch_size=2)
default_hooks = dict(checkpoint=dict(by_epoch=True, interval=1, max_keep_ckpts=3))
log_processor = dict(by_epoch=True)
