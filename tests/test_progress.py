"""Progress with ETA (densevit.progress): plain lines off a terminal, a redrawn bar on one; the
ProgressBarHook on a real mmengine Runner; make-synthetic, convert and benchmark progress.

Times come from a fake clock, so rates and remaining times are the hand-computed ones.
"""
import io
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

import densevit.progress as progress
from densevit.cli import main as cli
from densevit.progress import Progress, format_rate, format_time, track

from .conftest import ROOT


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal (what a bar is drawn on)."""
    encoding = 'utf-8'

    def isatty(self) -> bool:
        return True


class Clock:
    """``time.monotonic`` that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress, 'time', fake)
    return fake


def run(clock: Clock, stream, total: int, step: float = 0.5, **kwargs) -> None:
    """Count to ``total`` through track(), ``step`` seconds an item."""
    for _ in track(range(total), desc='write', stream=stream, **kwargs):
        clock.now += step


def test_importing_progress_loads_no_heavy_library():
    done = subprocess.run([sys.executable, '-c', 'import sys, densevit.progress; print(sorted('
                           "{m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', "
                           "'mmengine', 'tqdm'}))"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == '[]', done.stderr


def test_format_time_and_rate():
    assert [format_time(s) for s in (0, 5.4, 65, 3599.6, 3725)] == \
        ['0:00', '0:05', '1:05', '1:00:00', '1:02:05']
    assert [format_rate(r) for r in (2.0, 0.25, 250.0, 0.0)] == \
        ['2.0 it/s', '4.0 s/it', '250 it/s', '? it/s']


def test_plain_lines_each_tenth_with_eta_and_a_closing_total(clock):
    out = io.StringIO()
    run(clock, out, total=20)  # 2 items a second
    lines = out.getvalue().splitlines()
    assert '\r' not in out.getvalue()
    # a line each time another tenth of 20 is crossed (n = 2, 4, ..., 18), then the total
    assert lines[:-1] == [f'write: {n}/20 ({5 * n}%) 2.0 it/s eta {format_time((20 - n) / 2)}'
                          for n in range(2, 20, 2)]
    assert lines[1] == 'write: 4/20 (20%) 2.0 it/s eta 0:08'
    assert lines[-1] == 'write: 20/20 (100%) 2.0 it/s in 0:10'


def test_plain_lines_of_a_slow_loop_come_every_interval_and_of_a_large_one_at_most_ten(clock):
    out = io.StringIO()
    run(clock, out, total=1000, step=0.01, interval=60)  # 10 s in all: only the tenths
    assert len(out.getvalue().splitlines()) == 10
    out = io.StringIO()
    bar = Progress(total=None, desc='scan', stream=out, interval=30)
    for _ in range(7):  # 7 items of 20 s: a line when 30 s have passed since the last one
        clock.now += 20
        bar.update()
    bar.close()
    # one item every 20 s (0.05 it/s) reads as seconds per item
    assert out.getvalue().splitlines() == ['scan: 2 done 20.0 s/it 0:40 elapsed',
                                           'scan: 4 done 20.0 s/it 1:20 elapsed',
                                           'scan: 6 done 20.0 s/it 2:00 elapsed',
                                           'scan: 7 done 20.0 s/it in 2:20']


def test_terminal_bar_redraws_in_place_with_rate_and_remaining_time(clock):
    tty = FakeTerminal()
    run(clock, tty, total=4, step=0.5, redraw=0.0)
    text = tty.getvalue()
    assert text.endswith('\n') and text.count('\n') == 1
    frames = text[:-1].split('\r')[1:]
    assert [f.rstrip() for f in frames] == [
        'write:  25%|' + '█' * 7 + ' ' * 23 + '| 1/4 [0:00<0:02, 2.0 it/s]',
        'write:  50%|' + '█' * 15 + ' ' * 15 + '| 2/4 [0:01<0:01, 2.0 it/s]',
        'write:  75%|' + '█' * 22 + ' ' * 8 + '| 3/4 [0:02<0:00, 2.0 it/s]',
        'write: 100%|' + '█' * 30 + '| 4/4 [0:02<0:00, 2.0 it/s]',
        'write: 100%|' + '█' * 30 + '| 4/4 [0:02, 2.0 it/s]',  # the closing frame: no eta
    ]


def test_terminal_bar_redraws_at_most_every_redraw_seconds_and_clears_for_other_output(clock):
    tty = FakeTerminal()
    bar = Progress(total=20, desc='x', stream=tty, redraw=1.0)
    for _ in range(10):  # 0.25 s a step: frames at steps 1, 5 and 9 only
        clock.now += 0.25
        bar.update()
    frames = tty.getvalue().split('\r')[1:]
    assert [f.split('| ')[1].split(' ')[0] for f in frames] == ['1/20', '5/20', '9/20']
    bar.clear()  # blanks the line for a log record
    assert tty.getvalue().endswith('\r' + ' ' * len(frames[-1]) + '\r')
    clock.now += 0.01
    bar.update()  # drawn again at once, though less than `redraw` has passed
    assert tty.getvalue().split('\r')[-1].startswith('x:  55%|')


def test_an_error_in_the_loop_leaves_no_final_line(clock):
    out, tty = io.StringIO(), FakeTerminal()
    for stream in (out, tty):
        with pytest.raises(KeyError):
            for i in track(range(10), desc='x', stream=stream, redraw=0.0):
                clock.now += 1
                if i == 4:
                    raise KeyError('boom')
    assert out.getvalue().splitlines() == [f'x: {n}/10 ({10 * n}%) 1.0 it/s eta 0:0{10 - n}'
                                           for n in (1, 2, 3, 4)]
    assert tty.getvalue().endswith('\r' + ' ' * len(tty.getvalue().split('\r')[-3]) + '\r')


def test_bar_fits_a_narrow_terminal(clock, monkeypatch):
    monkeypatch.setattr(progress, '_columns', lambda stream: 40)
    tty = FakeTerminal()
    run(clock, tty, total=100, step=0.1, redraw=0.0)
    frames = tty.getvalue().rstrip('\n').split('\r')[1:]
    assert max(len(f.rstrip()) for f in frames) <= 39
    assert frames[-1].rstrip().endswith('100/100 [0:10, 10.0 it/s]')


# ------------------------------------------------------------------------ the training hook

CONFIG = osp.join(ROOT, 'configs/quickstart/segmenter-linear_vit-tiny_ade20k.py')


def _tiny_runner(data_root: str, work_dir: str, **updates):
    from densevit.apis import load_config
    from densevit.engine import build_runner
    train = [dict(type='LoadImageFromFile'),
             dict(type='LoadAnnotations', with_bbox=False, with_seg=True),
             dict(type='Resize', scale=(32, 32), keep_ratio=False), dict(type='PackSegInputs')]
    val = [train[0], train[2], train[1], train[3]]  # labels stay at the image's own size
    options = {
        'data_root': data_root, 'work_dir': work_dir,
        'model.backbone.depth': 1, 'model.backbone.pretrain_img_size': 32,
        'model.data_preprocessor.size': (32, 32),
        'train_dataloader.batch_size': 6, 'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_dataloader.dataset.pipeline': train,
        'val_dataloader.num_workers': 0, 'val_dataloader.persistent_workers': False,
        'val_dataloader.dataset.pipeline': val,
        'test_dataloader.num_workers': 0, 'test_dataloader.persistent_workers': False,
        'test_dataloader.dataset.pipeline': val,
        'train_cfg.max_epochs': 2, 'train_cfg.val_interval': 2,
        'param_scheduler': [], 'default_hooks.logger.interval': 1,
        'default_hooks.checkpoint': None, **updates}
    return build_runner(load_config(CONFIG, options))


@pytest.mark.slow
@pytest.mark.parametrize('terminal', [True, False])
def test_hook_draws_train_and_val_bars_on_a_terminal_only(ade20k_root, tmp_path, monkeypatch,
                                                         capsys, terminal):
    from densevit.engine.progress_hook import ProgressBarHook
    stream = FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr('sys.stderr', stream)
    runner = _tiny_runner(ade20k_root, str(tmp_path))
    assert sum(isinstance(h, ProgressBarHook) for h in runner.hooks) == 1  # on by default
    runner.train()  # 12 images, batch 6: 2 iterations an epoch, 2 epochs, then 4 val images
    text = stream.getvalue()
    if not terminal:  # the bar writes nothing; LoggerHook's plain lines (on stdout) have the
        # remaining time of training and of the val loop
        assert '\r' not in text and 'it/s' not in text and 'train epoch' not in text, text
        out = capsys.readouterr().out
        assert re.search(r'Epoch\(train\) \[1\]\[1/2\] .* eta: \d:\d\d:\d\d ', out), out
        assert re.search(r'Epoch\(val\) \[2\]\[2/4\] +eta: \d:\d\d:\d\d ', out), out
        return
    frames = [f.rstrip() for f in re.split(r'[\r\n]', text) if f.strip()]
    train = [f for f in frames if f.startswith('train epoch')]
    assert re.fullmatch(r'train epoch 1/2:  25%\|.*\| 1/4 \[\d:\d\d<\d:\d\d, .* (it/s|s/it)\]',
                        train[0]), train[0]
    assert train[-1].startswith('train epoch 2/2: 100%|') and ' 4/4 [' in train[-1]
    assert '<' not in train[-1]  # the closing frame has the time taken, not the remaining
    val = [f for f in frames if f.startswith('val')]
    assert val[-1].startswith('val: 100%|') and ' 4/4 [' in val[-1], val
    # the val bar ends its own line before training's bar is closed on the next
    lines = text.split('\n')
    assert lines[-1] == '' and lines[-3].split('\r')[-1].startswith('val: 100%')
    assert lines[-2].split('\r')[-1].startswith('train epoch 2/2: 100%')
    # LoggerHook's records (interval 1) blank the bar's line before they are written
    assert re.search(r'\| 1/4 \[[^\r]*\r {60,}\r', text), text
    runner.test()  # a test run of its own: one bar, ended by a newline
    tested = stream.getvalue()[len(text):]
    assert tested.startswith('\rtest:  25%|') and tested.endswith('\n') and tested.count('\n') == 1
    assert tested.split('\r')[-1].startswith('test: 100%|') and ' 4/4 [' in tested


def test_hook_turned_off_by_config_and_silent_off_rank_zero(ade20k_root, tmp_path,
                                                            monkeypatch):
    from densevit.engine import progress_hook
    from densevit.engine.progress_hook import ProgressBarHook
    runner = _tiny_runner(ade20k_root, str(tmp_path), **{'+default_hooks.progress': None})
    assert not any(isinstance(h, ProgressBarHook) for h in runner.hooks)
    monkeypatch.setattr('sys.stderr', FakeTerminal())
    hook = ProgressBarHook()
    assert hook._terminal() is not None
    monkeypatch.setattr(progress_hook, 'is_main_process', lambda: False)
    assert hook._terminal() is None
    with pytest.raises(ValueError, match="stream must be one of .*'stdout'.*got 'stdrr'"):
        ProgressBarHook(stream='stdrr')


# ------------------------------------------------------------------------------ subcommands

def test_make_synthetic_prints_progress_lines_per_split(tmp_path, capsys):
    assert cli(['make-synthetic', str(tmp_path), '--only', 'ade20k', '--num-train', '4',
                '--num-val', '2', '--size', '32']) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    counts = [re.match(r'ADE20K (\w+): (\d+)/(\d+) \((\d+)%\) .* (eta|in) \d+:\d\d$', line)
              for line in lines]
    assert all(counts), lines
    assert [(m[1], int(m[2]), int(m[3]), int(m[4]), m[5]) for m in counts] == [
        ('training', 1, 4, 25, 'eta'), ('training', 2, 4, 50, 'eta'),
        ('training', 3, 4, 75, 'eta'), ('training', 4, 4, 100, 'in'),
        ('validation', 1, 2, 50, 'eta'), ('validation', 2, 2, 100, 'in')]
    assert 'ADE20K stand-in:' in captured.out


def test_convert_shows_its_stages_and_benchmark_its_topics(tmp_path, capsys, monkeypatch):
    import timm

    from densevit.cli import benchmark
    state = timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=1).state_dict()
    torch.save(state, tmp_path / 'vit.pth')
    assert cli(['convert', 'timm_vit', str(tmp_path / 'vit.pth'), str(tmp_path / 'b.pth')]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(' ')[:3] for line in err] == [
        ['convert', 'timm_vit', '(read):'], ['convert', 'timm_vit', '(convert):'],
        ['convert', 'timm_vit', '(write):']]
    assert err[0].split(' ')[3:5] == ['1/3', '(33%)'] and err[-1].split(' ')[3:5] == \
        ['3/3', '(100%)']

    monkeypatch.setattr(benchmark, 'load_topic',
                        lambda topic: lambda quick: [{'case': topic, 'ratio': 1.5}])
    assert cli(['benchmark', 'vit', 'na2d']) == 0
    captured = capsys.readouterr()
    assert re.fullmatch(r'benchmark vit: 1/2 \(50%\) .* topic/s eta \d:\d\d\n'
                        r'benchmark na2d: 2/2 \(100%\) .* topic/s in \d:\d\d\n',
                        captured.err.replace('s/topic', 'topic/s')), captured.err
    assert '| vit | 1.5 |' in captured.out and '| na2d | 1.5 |' in captured.out
