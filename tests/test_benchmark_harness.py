"""The benchmark harness (tools/benchmarks/_common.py) and every topic moved onto it, at tiny
sizes: interleaved timing with a fake clock, the fresh-process peak memory against a known
allocation, and each topic's smallest case returning both implementations' rows with a finite
positive ratio and its own output comparison passed."""
import importlib
import importlib.util
import math
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if osp.join(ROOT, 'tools') not in sys.path:
    sys.path.insert(0, osp.join(ROOT, 'tools'))

from benchmarks._common import fresh_process, interleaved  # noqa: E402


class FakeClock:
    """A (wall, CPU) clock that only the timed functions move."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __call__(self):
        return self.wall, self.cpu


def _fake_fns(clock: FakeClock, durations: dict[str, list[float]], calls: list[str]):
    """Functions that each take the next of their durations (wall; CPU a quarter of it) and
    return how many calls were made before them."""
    runs = {name: iter(values) for name, values in durations.items()}

    def make(name):
        def fn():
            calls.append(name)
            seconds = next(runs[name])
            clock.wall += seconds
            clock.cpu += seconds / 4
            return len(calls)
        return fn
    return {name: make(name) for name in durations}


def test_interleaved_rotates_the_order_and_takes_medians_of_the_timed_runs():
    clock, calls = FakeClock(), []
    # first value: the warm-up (untimed); then three timed runs each
    fns = _fake_fns(clock, {'a': [100, 5, 1, 3], 'b': [100, 4, 8, 6], 'c': [100, 7, 2, 9]}, calls)
    timings = interleaved(fns, repeats=3, warmup=1, clock=clock)
    assert calls == ['a', 'b', 'c',  # warm-up
                     'a', 'b', 'c', 'b', 'c', 'a', 'c', 'a', 'b']
    # medians of (5, 1, 3), (4, 8, 6), (7, 2, 9)
    assert {name: t.seconds for name, t in timings.items()} == {'a': 3, 'b': 6, 'c': 7}
    assert {name: t.cpu_seconds for name, t in timings.items()} == {'a': 0.75, 'b': 1.5,
                                                                    'c': 1.75}
    assert timings['a'].wall == [5, 1, 3]
    # last outputs: a ran 11th, b 12th, c 10th
    assert {name: t.output for name, t in timings.items()} == {'a': 11, 'b': 12, 'c': 10}


def test_interleaved_alternates_two_and_can_skip_the_warm_up():
    clock, calls = FakeClock(), []
    fns = _fake_fns(clock, {'ours': [2, 4, 30, 1], 'ref': [3, 5, 7, 50]}, calls)
    timings = interleaved(fns, repeats=4, warmup=0, clock=clock)
    assert calls == ['ours', 'ref', 'ref', 'ours', 'ours', 'ref', 'ref', 'ours']
    assert timings['ours'].seconds == 3.0  # median of 2, 4, 30, 1
    assert timings['ref'].seconds == 6.0  # median of 3, 5, 7, 50
    with pytest.raises(ValueError, match='repeats'):
        interleaved(fns, repeats=0)


ALLOCATE = """
import sys
import numpy as np
from benchmarks._common import measure_peak, write_result
megabytes = int(sys.argv[1])
_, memory = measure_peak(lambda: np.ones(megabytes * 2 ** 20 // 8).sum())  # written, so resident
write_result(sys.argv[-1], memory)
"""


@pytest.mark.parametrize('megabytes, low, high', [(300, 280, 400), (0, 0, 30)])
def test_fresh_process_memory_sees_a_known_allocation(megabytes, low, high):
    memory = fresh_process(['-c', ALLOCATE, megabytes])
    assert low <= memory['extra_mb'] <= high
    assert memory['peak_mb'] == pytest.approx(memory['baseline_mb'] + memory['extra_mb'])
    assert memory['baseline_mb'] > 10  # the interpreter and numpy are resident


def test_fresh_process_raises_when_the_child_fails():
    with pytest.raises(subprocess.CalledProcessError):
        fresh_process(['-c', 'raise SystemExit(3)'])


# ------------------------------------------------------------------ topics at tiny sizes

@pytest.fixture(autouse=True)
def one_thread_children(monkeypatch):
    """The topics' worker processes on one thread: on a loaded 2-core machine two threads make
    tiny kernels wait for each other (a 64x64 Swin-T forward: 1 s against 0.04 s)."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    monkeypatch.setenv('MKL_NUM_THREADS', '1')


def _topic(name: str):
    return importlib.import_module(f'benchmarks.{name}')


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_vit_tiny():
    pytest.importorskip('segment_anything')
    pytest.importorskip('timm')
    rows = _topic('vit').run(tiny=True)
    assert [row['reference'] for row in rows] == ['segment_anything', 'timm']
    for row in rows:
        assert row['case'] == 'SAM ViT-B encoder 64x64'
        assert _positive(row['ratio']) and _positive(row['ours_s'])
        assert row['ratio'] == pytest.approx(row['reference_s'] / row['ours_s'])
        # fresh process per implementation: the weights (ViT-B, ~360 MB) are resident
        assert row['ours_peak_mb'] > 300 and row['reference_peak_mb'] > 300
        assert row['ours_max_abs_diff_vs_sam'] < 1e-3
        assert row['reference_max_abs_diff_vs_sam'] < 1e-3


@pytest.mark.slow
def test_msda_tiny():
    pytest.importorskip('transformers')
    rows = _topic('msda').run(tiny=True, only=('decoder/0/fwd',))
    assert [row['case'] for row in rows] == ['msda decoder B2 Q1100 fwd']
    row = rows[0]
    assert _positive(row['ratio']) and _positive(row['mem_ratio'])
    assert row['ratio'] == pytest.approx(row['reference_s'] / row['ours_s'])
    # both grid_sample ports agree
    assert row['max_abs_diff'] < 1e-4
    # the output alone (2 x 1100 x 256 floats) is ~2 MB; the inputs are resident beforehand
    assert 1 < row['ours_live_mb'] < row['ours_peak_mb']


@pytest.mark.slow
@pytest.mark.benchmark_topic
def test_sam_tiny():
    pytest.importorskip('segment_anything')
    rows = _topic('sam').run(tiny=True)
    assert [row['case'] for row in rows] == [
        'SAM ViT-B set_image (image embedding), 1024x1024', 'SAM ViT-B predict, one point, 3 masks',
        'SAM ViT-B predict_torch, 4 boxes, 1 mask each']
    for row in rows:
        assert row['reference'] == 'segment_anything'
        assert _positive(row['ratio']) and _positive(row['ours_cpu_s'])
        assert row['ratio'] == pytest.approx(row['reference_s'] / row['ours_s'])
        assert row['max_abs_diff'] < 1e-3  # embeddings, then mask logits


@pytest.mark.slow
@pytest.mark.benchmark_topic
def test_na2d_tiny():
    rows = _topic('na2d').run(tiny=True)
    references = ['sdpa 7x7 windows'] * 4
    if importlib.util.find_spec('natten') is not None:  # natten: forward rows only
        references = ['sdpa 7x7 windows', 'natten (cpu)', 'sdpa 7x7 windows',
                      'sdpa 7x7 windows', 'natten (cpu)', 'sdpa 7x7 windows']
    assert [row['reference'] for row in rows] == references
    assert rows[0]['case'] == 'na2d 28x28 k7 d1 fwd'
    assert rows[-1]['case'] == 'na2d 28x28 k7 d4 fwd+bwd'
    for row in rows:
        assert _positive(row['ratio']) and _positive(row['ours_extra_mb'])
        assert row['ours_peak_mb'] > row['ours_extra_mb']
        if row['reference'] == 'natten (cpu)':
            assert row['max_abs_diff'] < 1e-4


@pytest.mark.slow
@pytest.mark.benchmark_topic
def test_scaling_tiny():
    pytest.importorskip('timm')
    rows = _topic('scaling').run(tiny=True)
    assert [row['case'] for row in rows] == [
        'Swin-T 224 forward', 'DiNAT-T 224 forward', 'Swin-T forward scaling, sides [64, 96]',
        'DiNAT-T forward scaling, sides [64, 96]', 'ViTDet-B forward scaling, sides [64, 96]']
    swin = rows[0]
    assert swin['reference'] == 'timm'
    assert _positive(swin['time_ratio']) and _positive(swin['memory_ratio'])
    assert swin['time_ratio'] == pytest.approx(swin['ours_s'] / swin['reference_s'])
    assert swin['ours_peak_mb'] > swin['ours_added_mb'] > 0
    assert _positive(rows[1]['ours_s'])
    for row in rows[2:]:
        assert math.isfinite(row['time_exponent']) and math.isfinite(row['memory_exponent'])


@pytest.mark.slow
def test_upernet_tiny():
    pytest.importorskip('transformers')
    rows = _topic('upernet').run(tiny=True)
    assert [row['case'] for row in rows] == [
        'UperNet Swin-T 64x64 forward (no grad, batch 1)',
        'UperNet Swin-T 64x64 train + backward (batch 2)']
    for row in rows:
        assert _positive(row['time_ratio']) and _positive(row['memory_ratio'])
        assert row['time_ratio'] == pytest.approx(row['ours_s'] / row['reference_s'])
        assert _positive(row['ours_share_of_matmul_peak'])
        assert row['ours_peak_mb'] > row['ours_added_mb'] > 0
    assert rows[0]['max_rel_diff'] < 1e-4  # same weights, same logits
    ours_loss, ref_loss = map(float, rows[1]['loss_ours_vs_reference'].split(' / '))
    # 151-way cross-entropies of random labels, decode + 0.4 auxiliary: about 1.4 x log(150)
    assert ours_loss == pytest.approx(ref_loss, rel=0.1)
    assert 4 < ref_loss < 10


@pytest.mark.slow
@pytest.mark.benchmark_topic
def test_segmentation_sliding_window_tiny():
    pytest.importorskip('transformers')
    rows = _topic('segmentation').sliding_window(quick=False, tiny=True)
    assert [row['window_batch'] for row in rows] == [1, 6]
    for row in rows:
        assert (row['image'], row['window'], row['windows']) == ('128x64', '64x64', 3)
        assert _positive(row['ratio'])
        assert row['ratio'] == pytest.approx(row['ours_images_per_s']
                                             / row['reference_images_per_s'])
        assert row['max_rel_diff'] < 1e-4  # the same stitched logits


@pytest.mark.slow
def test_checkpointing_tiny():
    rows = _topic('checkpointing').run(tiny=True)
    assert [row['case'] for row in rows] == [
        'ViT-L (ViTDet) 64x64, batch 1, forward + backward']
    row = rows[0]
    assert _positive(row['memory_ratio'])
    assert row['memory_ratio'] == pytest.approx(row['plain_peak_mb'] / row['with_cp_peak_mb'])
    # ViT-L's weights and gradients (~2.4 GB) are resident in both
    assert row['plain_peak_mb'] > 2000 and row['with_cp_peak_mb'] > 2000
    assert _positive(row['plain_s']) and _positive(row['with_cp_s'])
    assert row['max_abs_grad_diff'] < 1e-6  # recomputation gives the same gradients


@pytest.mark.slow
def test_amp_tiny():
    rows = _topic('amp').run(tiny=True)
    assert [row['case'] for row in rows] == [
        'upernet-swin-t 64x64 batch 2, training step',
        'sam-vit-b-encoder 64x64 batch 2, training step']
    for row in rows:
        assert _positive(row['speedup'])
        assert row['speedup'] == pytest.approx(row['fp32_s'] / row['bf16_s'])
        # the same loss up to bfloat16's precision (and one AdamW step of lr 1e-5 between them)
        assert row['bf16_loss'] == pytest.approx(row['fp32_loss'], rel=0.15)


@pytest.mark.slow
def test_seg_loss_tiny():
    rows = _topic('seg_loss').run(tiny=True)
    assert [row['case'] for row in rows] == [
        '150-class loss, (2, 150, 8, 8) to 32x32, forward + backward']
    row = rows[0]
    assert _positive(row['ours_s']) and _positive(row['reference_s'])
    assert row['time_ratio'] == pytest.approx(row['ours_s'] / row['reference_s'])
    # densevit's criterion and torch's resize + cross_entropy give the same loss and gradient
    assert row['loss_diff'] < 1e-5 and row['max_abs_grad_diff'] < 1e-7
