# SAM ViT-H (segment-anything's vit_h): the official model, global attention in blocks
# (7, 15, 23, 31). Weights: the official sam_vit_h_4b8939.pth from
# https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth, converted by
#   python tools/convert_checkpoint.py sam sam_vit_h_4b8939.pth work_dirs/sam_vit-h.pth --config configs/sam/sam_vit-h.py
# then used with densevit.apis.init_model(config, 'work_dirs/sam_vit-h.pth') and SamPredictor.
_base_ = '../_base_/models/sam.py'
model = dict(backbone=dict(arch='huge'))
