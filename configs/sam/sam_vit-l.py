# SAM ViT-L (segment-anything's vit_l): the official model, global attention in blocks
# (5, 11, 17, 23). Weights: the official sam_vit_l_0b3195.pth from
# https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth, converted by
#   python tools/convert_checkpoint.py sam sam_vit_l_0b3195.pth work_dirs/sam_vit-l.pth --config configs/sam/sam_vit-l.py
# then used with densevit.apis.init_model(config, 'work_dirs/sam_vit-l.pth') and SamPredictor.
_base_ = '../_base_/models/sam.py'
model = dict(backbone=dict(arch='large'))
