# detr_adamw_12e.py stretched to 500 epochs with the lr x0.1 after epoch 400 (DETR's long
# schedule); validation every 10 epochs.
_base_ = './detr_adamw_12e.py'
max_epochs = 500
param_scheduler = [
    dict(type='MultiStepLR', by_epoch=True, milestones=[400], gamma=0.1, begin=0,
         end=max_epochs),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=10)
