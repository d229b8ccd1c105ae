"""Write the synthetic COCO 2017 / ADE20K stand-in sets.

    python tools/make_synthetic.py OUT [--seed 0] [--num-train 200] [--num-val 50] [--size 128]
                                       [--only coco|ade20k] [--recolor-seed N]

writes OUT/coco (the COCO data_root) and OUT/ade20k/ADEChallengeData2016 (the ADE20K data_root).
Same as ``densevit make-synthetic``; the code is densevit.cli.synthetic.
"""
from densevit.cli.synthetic import main, parse_args  # noqa: F401  (this script's interface)

if __name__ == '__main__':
    main()
