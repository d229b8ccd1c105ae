# Mask DINO's COCO instance schedule (configs/coco/instance-segmentation/
# Base-COCO-InstanceSegmentation.yaml, maskdino/config.py): AdamW, lr 1e-4, weight decay 0.05
# except on norm layers and embeddings, backbone lr x0.1, full-model gradient clipping at total
# norm 0.01; 368,750 iterations at batch 16 (50 epochs), lr x0.1 at 327,778 and again at
# 355,092; validation every 5000 iterations. The published run used mixed precision
# (SOLVER.AMP.ENABLED): train with tools/train.py --amp.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0,
                       custom_keys={'backbone': dict(lr_mult=0.1),
                                    'label_enc': dict(decay_mult=0.0),
                                    'tgt_embed': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=0.01, norm_type=2))
param_scheduler = [
    dict(type='MultiStepLR', by_epoch=False, milestones=[327778, 355092], gamma=0.1, begin=0,
         end=368750),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=368750, val_interval=5000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
