"""Print the numbers ``make demo`` measured, in a few lines:
``python tools/demo_summary.py SEG_METRICS.json SEG_RECOLORED_METRICS.json [DET_METRICS.json]``."""
import json
import sys


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def main(argv=None) -> None:
    paths = argv if argv is not None else sys.argv[1:]
    seg, recolored = _read(paths[0]), _read(paths[1])
    print('\n== make demo ==')
    print(f'segmentation (stand-in ADE20K val): mIoU {seg["ade20k/mIoU"]:.1f}, '
          f'mAcc {seg["ade20k/mAcc"]:.1f}, aAcc {seg["ade20k/aAcc"]:.1f}')
    print(f'  the same images with every colour redrawn: mIoU {recolored["ade20k/mIoU"]:.1f} '
          '(colour never tells a class on the stand-in)')
    if len(paths) < 3:
        return
    det = _read(paths[2])
    box = {k.rsplit('/', 1)[-1]: v for k, v in det.items() if '/bbox_' in k}
    mask = {k.rsplit('/', 1)[-1]: v for k, v in det.items() if '/segm_' in k}
    nan = float('nan')
    print(f'detection (stand-in COCO val): box AP {box.get("bbox_mAP", nan):.3f}, '
          f'AP50 {box.get("bbox_mAP_50", nan):.3f}; mask AP {mask.get("segm_mAP", nan):.3f}, '
          f'AP50 {mask.get("segm_mAP_50", nan):.3f}')
    print('pictures of the predictions: work_dirs/demo/infer/vis, work_dirs/demo-dino/infer/vis '
          '(docs/getting_started.md: SAM, and the real datasets)')


if __name__ == '__main__':
    main()
