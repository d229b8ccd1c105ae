"""The densevit command: every subcommand's happy path and one bad input each.

Most calls go through ``densevit.cli.main`` in this process (what the console script and
``python -m densevit`` run); two subprocesses check the real exit codes and that a bad input
prints one line, not a traceback.
"""
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from densevit.cli import SUBCOMMANDS
from densevit.cli import main as cli
from tests.conftest import ROOT, tool_env

UPERNET_R18 = osp.join(ROOT, 'configs', 'quickstart', 'upernet_resnet18_ade20k.py')


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'densevit', *args], cwd=ROOT, env=tool_env(),
                          capture_output=True, text=True, timeout=120)


def one_error_line(capsys, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'Traceback' not in err, err
    for part in parts:
        assert part in err, err
    return err


def test_help_lists_every_subcommand_and_unknown_ones_get_the_closest():
    done = run_cli('--help')
    assert done.returncode == 0
    for name in ('train', 'test', 'infer', 'browse', 'plot', 'list-models', 'info', 'convert',
                 'make-synthetic', 'benchmark', 'export', 'zoo'):
        assert f'\n  {name} ' in done.stdout
    done = run_cli('lst-models')
    assert done.returncode == 2 and "did you mean 'list-models'" in done.stderr


@pytest.mark.parametrize('name', list(SUBCOMMANDS))
def test_each_subcommand_has_help(name, capsys):
    assert cli([name, '--help']) == 0
    out = capsys.readouterr().out
    assert out.startswith('usage:') and len(out.splitlines()) < 40
    assert f'densevit {name}' in out.splitlines()[0]  # argparse names the subcommand


def test_list_models_groups_every_kind(capsys):
    from densevit.models.backbones.vit import VIT_ARCHS
    assert cli(['list-models']) == 0
    out = capsys.readouterr().out
    kind = {}
    heading = None
    for line in out.splitlines():
        if not line.startswith(' '):
            heading = line.split(' (')[0]
        else:
            kind[line.split()[0]] = heading
    expected = {'ViT': 'backbones', 'Swin': 'backbones', 'DiNAT': 'backbones',
                'UPerHead': 'heads', 'DINO': 'heads', 'SimpleFeaturePyramid': 'necks',
                'Segmentor': 'task models', 'Detector': 'task models',
                'CocoDataset': 'datasets', 'ADE20KDataset': 'datasets',
                'RandomCrop': 'transforms', 'IoUMetric': 'metrics', 'CocoMetric': 'metrics'}
    assert {name: kind.get(name) for name in expected} == expected
    vit_line = next(line for line in out.splitlines() if line.split()[:1] == ['ViT'])
    assert vit_line.split('archs: ')[1].split(', ') == list(VIT_ARCHS)
    assert cli(['list-models', '*detr']) == 0
    assert capsys.readouterr().out.split() == ['heads', '(2)', 'DeformableDETR', 'The',
                                               'Deformable', 'DETR', 'detection', 'head',
                                               '(sigmoid', 'focal', 'classes,', 'L1', '+',
                                               'GIoU', 'boxes)', 'DETR', 'The', 'DETR',
                                               'detection', 'head', '(softmax', 'classes',
                                               'with', 'a', 'no-object', 'class,', 'L1', '+',
                                               'GIoU', 'boxes)']


def test_list_models_unknown_name_names_the_closest(capsys):
    assert cli(['list-models', 'Swinn']) == 1
    one_error_line(capsys, "'Swinn'", 'closest: Swin')


def test_info_counts_parameters_flops_and_feature_maps(capsys):
    """UperNet on timm's ResNet-18 at the quickstart's 128x128: the parameter total is the built
    model's, the backbone FLOPs are timm's published 1.82 GMACs at 224 scaled to 128, and the
    maps are timm's feature_info at strides 4..32."""
    import timm

    from densevit.apis import init_model
    from densevit.cli.info import main as info_main
    info = info_main([UPERNET_R18])
    out = capsys.readouterr().out
    model = init_model(UPERNET_R18)
    assert info['parameters'] == sum(p.numel() for p in model.parameters())
    assert f'parameters: {info["parameters"]:,}' in out
    assert info['input_size'] == (128, 128) and 'input: 1x3x128x128' in out
    row = next(line for line in out.splitlines() if line.startswith('  backbone ')
               and line.rstrip().endswith('M'))  # the FLOPs table's backbone row
    assert float(row.split()[-1][:-1]) * 1e6 == pytest.approx(1.82e9 * (128 / 224) ** 2, rel=0.02)
    feature_info = timm.create_model('resnet18', features_only=True).feature_info
    channels = dict(zip(feature_info.reduction(), feature_info.channels()))
    assert [(name, c, s, hw) for part, name, c, s, hw in info['features']] == [
        (f's{s}', channels[s], s, (128 // s, 128 // s)) for s in (4, 8, 16, 32)]
    assert info['weights'] == [] and 'weights: none' in out


def test_info_counts_neighborhood_attention():
    """A traced DiNAT records densevit's na2d as one op, counted by hand: at 224 px the maps are
    56, 28, 14 and 7 tokens wide; each token meets 7 x 7 keys, and q.k plus attn @ v cost
    2 x head_dim multiply-adds per key and head, i.e. side^2 * 49 * 2 * dim per stage."""
    import torch
    from mmengine.analysis import FlopAnalyzer

    import densevit.models  # noqa: F401
    from densevit.cli.info import neighborhood_attention_flops
    from densevit.registry import MODELS
    model = MODELS.build(dict(type='DiNAT', arch='tiny', embed_dim=32, depths=(1, 1, 1, 1),
                              num_heads=(1, 2, 4, 8))).eval()
    analyzer = FlopAnalyzer(model, (torch.zeros(1, 3, 224, 224),))
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analyzer.set_op_handle('densevit::na2d_tiled', neighborhood_attention_flops)
    expected = sum(side ** 2 * 49 * 2 * dim for side, dim in ((56, 32), (28, 64), (14, 128),
                                                               (7, 256)))
    assert analyzer.by_operator()['na2d_tiled'] == expected == 18_439_680


def test_info_reads_the_weights_and_converter_command_of_a_config_header():
    from densevit.apis import load_config
    from densevit.cli.info import converter_commands, expected_weights
    config = osp.join(ROOT, 'configs', 'upernet', 'upernet_swin-t_ade20k-512x512-160k.py')
    assert expected_weights(load_config(config)) == [
        ('model.backbone_checkpoint', 'checkpoints/swin_tiny_densevit.pth')]
    assert converter_commands(config) == [
        'python tools/convert_checkpoint.py swin swin_tiny_patch4_window7_224.pth '
        'checkpoints/swin_tiny_densevit.pth']


def test_info_missing_config_is_one_line(capsys):
    assert cli(['info', 'configs/nope.py']) == 1
    one_error_line(capsys, 'configs/nope.py', 'does not exist')


def _write_scalars(work_dir, timestamp='20260101_000000'):
    """A scalars.json as mmengine's LoggerHook writes it through LocalVisBackend: two epochs of
    training lines (every 2 of 3 iterations) and a validation line after each epoch."""
    from mmengine.visualization import LocalVisBackend
    backend = LocalVisBackend(save_dir=str(work_dir / timestamp / 'vis_data'))
    for it in (2, 3, 5, 6):
        epoch = 1 if it <= 3 else 2
        backend.add_scalars({'lr': 0.01 * it, 'loss': 5.0 / it, 'decode.loss_ce': 4.0 / it,
                             'grad_norm': 1.0, 'time': 0.1, 'data_time': 0.01, 'epoch': epoch,
                             'iter': it}, step=it)
        if it in (3, 6):
            backend.add_scalars({'mIoU': 10.0 * epoch, 'aAcc': 50.0 + epoch, 'data_time': 0.01,
                                 'time': 0.2}, step=epoch)
    path = work_dir / timestamp / 'vis_data' / 'scalars.json'
    assert path.is_file()
    return path


def test_plot_draws_each_group(tmp_path, capsys):
    from densevit.cli.plot import read_scalars
    path = _write_scalars(tmp_path)
    train, val = read_scalars([str(path)])
    assert val['mIoU'] == [(3, 10.0), (6, 20.0)]  # after the last training line of each epoch
    assert train['loss'] == [(2, 2.5), (3, 5 / 3), (5, 1.0), (6, 5 / 6)]
    out = tmp_path / 'curves.png'
    assert cli(['plot', str(tmp_path), '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert ('loss: loss; loss terms: decode.loss_ce; learning rate: lr; '
            'validation: mIoU, aAcc') in printed
    pixels = np.asarray(Image.open(out).convert('L'), dtype=np.float32)
    assert pixels.shape == (4 * 260, 800)  # four subplots of 2.6 inches at 100 dpi
    assert (pixels < 200).mean() > 0.01 and pixels.std() > 10
    assert cli(['plot', str(tmp_path), '--keys', 'grad_norm', '--out', str(out)]) == 0
    assert 'other: grad_norm' in capsys.readouterr().out


def test_plot_without_scalar_log_names_the_work_dir(tmp_path, capsys):
    assert cli(['plot', str(tmp_path), '--out', str(tmp_path / 'x.png')]) == 1
    one_error_line(capsys, f'no scalar log in {tmp_path}', 'scalars.json')
    assert not (tmp_path / 'x.png').exists()


def test_convert_matches_the_tool_and_names_unknown_kinds(tmp_path, capsys):
    import timm

    from tools.convert_checkpoint import main as tool_main
    reference = timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=1)
    torch.save(reference.state_dict(), tmp_path / 'vit.pth')
    tool_main(['timm_vit', str(tmp_path / 'vit.pth'), str(tmp_path / 'a.pth')])
    assert cli(['convert', 'timm_vit', str(tmp_path / 'vit.pth'), str(tmp_path / 'b.pth')]) == 0
    a, b = (torch.load(tmp_path / f'{n}.pth', weights_only=True) for n in 'ab')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert capsys.readouterr().out.splitlines()[-1] == \
        f'wrote {len(b)} tensors to {tmp_path / "b.pth"}'
    assert cli(['convert', 'vit_b', str(tmp_path / 'vit.pth'), str(tmp_path / 'c.pth')]) == 1
    one_error_line(capsys, "'vit_b'", 'known kinds:', 'timm_vit')


def test_make_synthetic_writes_the_ade20k_layout(tmp_path, capsys):
    assert cli(['make-synthetic', str(tmp_path), '--only', 'ade20k', '--num-train', '2',
                '--num-val', '1', '--size', '32']) == 0
    root = tmp_path / 'ade20k' / 'ADEChallengeData2016'
    assert sorted(p.suffix for p in (root / 'images' / 'training').iterdir()) == ['.jpg'] * 2
    assert len(os.listdir(root / 'annotations' / 'validation')) == 1
    assert cli(['make-synthetic', str(tmp_path), '--only', 'voc']) == 2
    assert "invalid choice: 'voc'" in capsys.readouterr().err


def test_benchmark_finds_the_repository_topics_or_says_it_is_missing(monkeypatch, tmp_path, capsys):
    from densevit.cli import _repo
    from densevit.cli.benchmark import load_topic
    assert callable(load_topic('na2d'))
    assert cli(['benchmark', 'nope']) == 2
    assert "unknown topics ['nope']" in capsys.readouterr().err
    monkeypatch.setattr(_repo, 'REPO', str(tmp_path))
    assert cli(['benchmark', 'na2d']) == 1
    one_error_line(capsys, 'tools/benchmarks', 'installed without its repository')


def test_train_and_test_pass_their_arguments_to_the_tools(capsys, tmp_path):
    """A subprocess: the exit code and the one-line error are the real command's."""
    done = run_cli('train', 'configs/nope.py')
    assert done.returncode == 1 and 'Traceback' not in done.stderr
    assert done.stderr.strip() == \
        'densevit train: error: config file configs/nope.py does not exist'
    assert cli(['test', UPERNET_R18, '--work-dir', str(tmp_path)]) == 1  # no checkpoint given
    one_error_line(capsys, 'needs a CHECKPOINT')
