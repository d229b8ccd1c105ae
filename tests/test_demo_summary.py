"""tools/demo_summary.py prints the numbers of the metrics files make demo writes."""
import json
import os.path as osp
import runpy

from .conftest import ROOT


def test_summary_prints_the_metrics(tmp_path, capsys):
    files = {
        'seg.json': {'ade20k/mIoU': 41.26, 'ade20k/mAcc': 55.5, 'ade20k/aAcc': 80.04},
        'recolored.json': {'ade20k/mIoU': 40.71, 'ade20k/mAcc': 54.0, 'ade20k/aAcc': 79.0},
        'det.json': {'coco/bbox_mAP': 0.4123, 'coco/bbox_mAP_50': 0.7011,
                     'coco/segm_mAP': 0.3501, 'coco/segm_mAP_50': 0.6502},
    }
    for name, metrics in files.items():
        (tmp_path / name).write_text(json.dumps(metrics))
    main = runpy.run_path(osp.join(ROOT, 'tools', 'demo_summary.py'))['main']
    main([str(tmp_path / name) for name in files])
    out = capsys.readouterr().out
    assert 'mIoU 41.3, mAcc 55.5, aAcc 80.0' in out
    assert 'colour redrawn: mIoU 40.7' in out
    assert 'box AP 0.412, AP50 0.701; mask AP 0.350, AP50 0.650' in out
    assert 'work_dirs/demo/infer/vis' in out  # where make demo's infer steps put the overlays
