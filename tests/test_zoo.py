"""The model zoo page (docs/model_zoo.md) and ``densevit zoo``: the page is what the configs give,
its targets are the configs' header lines, and a stale page is caught with the rows that differ.

Counting FLOPs of every config takes many minutes on two cores (a traced forward of each model
at its full input size), so the page check regenerates every column but FLOPs for all configs,
and FLOPs for two small ones.
"""
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from densevit.cli import main as cli
from densevit.cli import zoo
from tests.conftest import ROOT

PAGE = osp.join(ROOT, 'docs', 'model_zoo.md')
SMALL = ['configs/quickstart/upernet_resnet18_ade20k.py',
         'configs/quickstart/segmenter-linear_vit-tiny_ade20k.py']


def test_targets_are_the_config_headers_target_lines():
    assert zoo.target(osp.join(ROOT, 'configs/upernet/upernet_swin-t_ade20k-512x512-160k.py')) \
        == ('44.5 mIoU single-scale (45.8 multi-scale + flip)',
            'Swin paper (Liu et al., ICCV 2021) Table 3 (ADE20K val); the official '
            'Swin-Transformer-Semantic-Segmentation model zoo agrees.')
    # two numbers stay together; the source runs over three header lines
    mask_dino = osp.join(ROOT, 'configs/dino/dino-mask_r50_coco-lsj-1024-50e.py')
    published, source = zoo.target(mask_dino)
    assert published == '46.3 mask AP, 51.7 box AP (COCO val2017)'
    assert source.startswith('IDEA-Research/MaskDINO README') and source.endswith('2048.yaml).')
    published, source = zoo.target(osp.join(ROOT, 'configs/dino/dino-4scale_dinat-t_coco-12e.py'))
    assert published == 'none published'
    assert source.endswith("so DINO Swin-T's 51.3 box AP is the bar to compare with.")
    assert zoo.target(osp.join(ROOT, SMALL[0])) == ('', '')


def test_attention_counts_both_matrix_products():
    """mmengine's FlopAnalyzer skips scaled_dot_product_attention; info's handle counts
    q @ k^T and attn @ v: 2 heads x (5 queries x 7 keys x 4 dims + 5 x 7 x 3 value dims)."""
    from densevit.cli.info import count_flops

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Parameter(torch.randn(1, 2, 5, 4))
            self.k = torch.nn.Parameter(torch.randn(1, 2, 7, 4))
            self.v = torch.nn.Parameter(torch.randn(1, 2, 7, 3))

        def forward(self, x):
            return F.scaled_dot_product_attention(self.q, self.k, self.v)

    total, _, _ = count_flops(Attention(), (4, 4))
    assert total == 2 * (5 * 7 * 4 + 5 * 7 * 3)


@pytest.mark.slow
def test_page_matches_the_configs():
    """Every row and section of docs/model_zoo.md, regenerated from configs/ (FLOPs for the two
    small configs only), and every config reported as not reproduced."""
    with open(PAGE, encoding='utf-8') as f:
        page = f.read()
    rows = zoo.table_rows(page)
    flops = zoo.page_flops(page)
    configs = zoo.zoo_configs()
    assert sorted(rows) == configs and len(configs) >= 25
    entries = []
    for config in configs:
        item = zoo.entry(config, flops=config in SMALL)
        if config in SMALL:
            assert item.flops == rows[config]['FLOPs'], config
        item.flops, item.notes = flops[config]
        entries.append(item)
    regenerated = zoo.render(entries) + '\n'
    assert zoo.stale_rows(page, regenerated) == []
    assert {row['reproduced'] for row in rows.values()} == {'not yet'}
    assert rows['configs/upernet/upernet_swin-t_ade20k-512x512-160k.py']['target'] == \
        '44.5 mIoU single-scale (45.8 multi-scale + flip)'


def test_check_names_the_stale_row(tmp_path, monkeypatch, capsys):
    """On two small configs: the page is written, --check passes, then a changed parameter
    count fails --check with exactly that row, old and new."""
    monkeypatch.setattr(zoo, 'zoo_configs', lambda root=None: list(SMALL))
    out = str(tmp_path / 'zoo.md')
    assert cli(['zoo', '--out', out]) == 0
    assert cli(['zoo', '--out', out, '--check']) == 0
    capsys.readouterr()
    with open(out, encoding='utf-8') as f:
        page = f.read()
    row = zoo.table_rows(page)[SMALL[0]]
    # the parameter count is the built model's
    from densevit.apis import init_model
    model = init_model(osp.join(ROOT, SMALL[0]))
    assert row['params'] == f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M'
    line = next(line for line in page.splitlines() if line.startswith('| [upernet_resnet18'))
    with open(out, 'w', encoding='utf-8') as f:
        f.write(page.replace(line, line.replace(f'| {row["params"]} |', '| 1.00M |')))
    assert cli(['zoo', '--out', out, '--check', '--no-flops']) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        '-' + line.replace(f'| {row["params"]} |', '| 1.00M |'), '+' + line]
    assert 'is stale: 2 lines differ' in captured.err and len(captured.err.splitlines()) == 1
