"""Convert an official checkpoint to densevit's keys:
``python tools/convert_checkpoint.py KIND IN OUT [--config CONFIG]`` (same as ``densevit convert``).

KIND is one of the converters in densevit.checkpoint (timm_vit, mae, deit, sam, vitdet, segmenter,
swin, nat, dinat, resnet, deformable_detr, dino, hf_upernet). With ``--config`` the converted
weights are loaded into that config's model (its backbone for backbone-only kinds) and the load
report is printed: missing, unexpected and resized keys. The code is densevit.cli.convert.
"""
from densevit.cli.convert import main, parse_args  # noqa: F401  (this script's interface)

if __name__ == '__main__':
    main()
