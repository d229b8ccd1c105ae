# detrex's DETR-family schedule (configs/common: optim.AdamW, coco_schedule.lr_multiplier_12ep):
# AdamW, lr 1e-4, weight decay 1e-4 except on norm layers (weight_decay_norm=0), backbone lr
# x0.1, gradient clipping at total norm 0.1; 90k iterations at batch 16 ("12 epochs" of 7500
# iterations), lr x0.1 after 82.5k (epoch 11), no warmup; validation every 5000 iterations.
# mmengine applies custom_keys before norm_decay_mult, so the backbone's norms keep weight decay
# here (1e-4 at lr 1e-5: a 1e-9 relative shrink per step).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={'backbone': dict(lr_mult=0.1)}),
    clip_grad=dict(max_norm=0.1, norm_type=2))
param_scheduler = [
    dict(type='MultiStepLR', by_epoch=False, milestones=[82500], gamma=0.1, begin=0,
         end=90000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=90000, val_interval=5000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
