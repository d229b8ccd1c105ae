# detr_adamw_12e.py stretched to 50 epochs with the lr x0.1 after epoch 40 (Deformable DETR).
_base_ = './detr_adamw_12e.py'
max_epochs = 50
param_scheduler = [
    dict(type='MultiStepLR', by_epoch=True, milestones=[40], gamma=0.1, begin=0,
         end=max_epochs),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
