# The DETR-family optimiser of the official repos (DETR, Deformable DETR, DINO): AdamW, lr 1e-4,
# weight decay 1e-4 on every parameter, backbone lr x0.1, gradient clipping at total norm 0.1;
# 12 epochs with the lr x0.1 after epoch 11 (DINO's 12-epoch schedule, lr_drop=11).
# Validation every epoch. Method configs set the batch size (the official runs: 8 GPUs x 2).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}),
    clip_grad=dict(max_norm=0.1, norm_type=2))
max_epochs = 12
param_scheduler = [
    dict(type='MultiStepLR', by_epoch=True, milestones=[11], gamma=0.1, begin=0,
         end=max_epochs),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
