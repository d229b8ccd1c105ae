# SAM ViT-B (segment-anything's vit_b): the official model, global attention in blocks
# (2, 5, 8, 11). Weights: the official sam_vit_b_01ec64.pth from
# https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth, converted by
#   python tools/convert_checkpoint.py sam sam_vit_b_01ec64.pth work_dirs/sam_vit-b.pth --config configs/sam/sam_vit-b.py
# then used with densevit.apis.init_model(config, 'work_dirs/sam_vit-b.pth') and SamPredictor.
_base_ = '../_base_/models/sam.py'
model = dict(backbone=dict(arch='base'))
