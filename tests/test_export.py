"""``densevit export``: the exported graphs of a segmentor, a detector and SAM's encoder and
decoder, run by onnxruntime (ONNX) or as a loaded torch.export program, give what the eager
model gives through its own preprocessing and ``predict`` / ``decode`` (to 1e-4), and a dynamic
batch of 2 gives what two batches of 1 give.

The models are the tiny quickstart configs with random weights (seeded), saved as checkpoints
the command loads; the reference is the model loaded from the same checkpoint, run the way
densevit runs it (data preprocessor, ``test_step``, ``decode``), not the export graphs.
"""
import functools
import os
import os.path as osp

import numpy as np
import pytest
import torch

from densevit.apis import init_model
from densevit.cli import main as cli
from densevit.export import write_atomically
from densevit.structures import DataSample
from tests.conftest import ROOT

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

CONFIGS = {name: osp.join(ROOT, 'configs', 'quickstart', f'{name}.py') for name in
           ('upernet_resnet18_ade20k', 'dino_vit-tiny_coco', 'sam_vit-tiny_coco')}
SUFFIX = {'onnx': '.onnx', 'torch-export': '.pt2'}
TOL = 1e-4


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tiny models: on a busy 2-core machine a second thread costs ~10x per kernel."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """name -> a checkpoint of the config's model with random weights (seed 0)."""
    folder = tmp_path_factory.mktemp('export_ckpt')
    paths = {}
    for name, config in CONFIGS.items():
        torch.manual_seed(0)
        model = init_model(config)
        paths[name] = str(folder / f'{name}.pth')
        torch.save({'state_dict': model.state_dict(), 'meta': {}}, paths[name])
    return paths


@functools.lru_cache(maxsize=4)
def load(path: str, fmt: str):
    """An onnxruntime session (one thread) or the loaded torch.export program's module."""
    if fmt == 'onnx':
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        return onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    return torch.export.load(path).module()


def run(path: str, fmt: str, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """The exported graph at ``path`` on ``inputs``: onnxruntime for ONNX, else the program."""
    graph = load(path, fmt)
    if fmt == 'onnx':
        names = [arg.name for arg in graph.get_inputs()]
        return [torch.from_numpy(out) for out in
                graph.run(None, {n: t.numpy() for n, t in zip(names, inputs)})]
    outputs = graph(*inputs)  # outside no_grad, as a user may run it
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def images(n: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """(n, 3, H, W) uint8 RGB noise with some structure (two flat rectangles)."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, (n, 3, *size), dtype=np.uint8)
    out[:, :, size[0] // 4:size[0] // 2, size[1] // 4:size[1] // 2] = rng.integers(
        0, 256, (n, 3, 1, 1), dtype=np.uint8)
    return torch.from_numpy(out)


def predict(model, batch: torch.Tensor) -> list:
    """The eager model's predictions for uint8 images of one size, as ``densevit test`` makes
    them (its data preprocessor pads; ``img_shape`` and ``ori_shape`` are the image's size)."""
    size = tuple(batch.shape[-2:])
    samples = [DataSample(metainfo=dict(img_shape=size, ori_shape=size)) for _ in batch]
    with torch.no_grad():
        return model.test_step(dict(inputs=list(batch), data_samples=samples))


def export(tmp_path, name: str, checkpoints, fmt: str, *args: str) -> str:
    out = str(tmp_path / f'{name}{SUFFIX[fmt]}')
    assert cli(['export', CONFIGS[name], checkpoints[name], '--format', fmt, '--out', out,
                *args]) == 0
    return out


@pytest.mark.parametrize('fmt', ['onnx', 'torch-export'])
def test_segmentor_graph_gives_predict_and_a_dynamic_batch(fmt, tmp_path, checkpoints, capsys):
    # 100 x 120 is not a multiple of the preprocessor's size_divisor 32: the graph must pad to
    # 128 x 128 and crop as the preprocessor and postprocess do
    name = 'upernet_resnet18_ade20k'
    path = export(tmp_path, name, checkpoints, fmt, '--input-size', '100', '120',
                  '--dynamic-batch')
    assert 'wrote Segmentor at 100x120' in capsys.readouterr().out
    model = init_model(CONFIGS[name], checkpoints[name])
    batch = images(2, (100, 120))
    expected = predict(model, batch)
    logits, labels = run(path, fmt, batch.float())
    assert logits.shape == (2, 150, 100, 120) and labels.shape == (2, 100, 120)
    if fmt == 'onnx':  # the dynamic dimension has a name a user can read
        assert load(path, fmt).get_inputs()[0].shape == ['batch', 3, 100, 120]
    for i, sample in enumerate(expected):
        torch.testing.assert_close(logits[i], sample.seg_logits.data, atol=TOL, rtol=0)
        assert torch.equal(labels[i], sample.pred_sem_seg.data[0])
    singles = [run(path, fmt, batch[i:i + 1].float()) for i in range(2)]
    torch.testing.assert_close(torch.cat([s[0] for s in singles]), logits, atol=TOL, rtol=0)


def test_sliding_window_segmentor_graph_has_a_fixed_batch(tmp_path, checkpoints, capsys):
    # 64 x 64 windows stepping by 48 over 100 x 120 padded to 128 x 128: 3 x 3 windows, the last
    # ones aligned to the border; the 18 windows of two images in one forward (one trace)
    name = 'upernet_resnet18_ade20k'
    options = {'model.test_cfg.mode': 'slide', '+model.test_cfg.crop_size': (64, 64),
               '+model.test_cfg.stride': (48, 48), '+model.test_cfg.batch_size': 18}
    slide = ['--cfg-options', *(f'{key}={value}'.replace(' ', '') for key, value in
                                options.items())]
    out = str(tmp_path / 'slide.pt2')
    args = ['export', CONFIGS[name], checkpoints[name], '--format', 'torch-export', '--out', out,
            '--input-size', '100', '120', *slide]
    assert cli(args + ['--dynamic-batch']) == 1
    from tests.test_cli import one_error_line
    one_error_line(capsys, 'fixed batch', "mode='slide'")
    assert cli(args + ['--batch-size', '2']) == 0
    model = init_model(CONFIGS[name], checkpoints[name], cfg_options=options)
    assert model.test_cfg['mode'] == 'slide'
    batch = images(2, (100, 120), seed=3)
    expected = predict(model, batch)
    logits, labels = run(out, 'torch-export', batch.float())
    for i, sample in enumerate(expected):
        torch.testing.assert_close(logits[i], sample.seg_logits.data, atol=TOL, rtol=0)
        assert torch.equal(labels[i], sample.pred_sem_seg.data[0])


@pytest.mark.parametrize('fmt', [pytest.param('onnx', marks=pytest.mark.slow), 'torch-export'])
def test_detector_graph_gives_pred_instances(fmt, tmp_path, checkpoints):
    # DINO with the Mask DINO branch; 112 x 128 is padded to 128 x 128, so the head's padding
    # mask and the box scale (the unpadded image) matter
    name = 'dino_vit-tiny_coco'
    path = export(tmp_path, name, checkpoints, fmt, '--input-size', '112', '128')
    model = init_model(CONFIGS[name], checkpoints[name])
    batch = images(1, (112, 128), seed=1)
    expected = predict(model, batch)[0].pred_instances
    boxes, scores, labels, masks = run(path, fmt, batch.float())
    assert boxes.shape == (1, 100, 4) and masks.shape == (1, 100, 112, 128)
    torch.testing.assert_close(scores[0], expected.scores, atol=TOL, rtol=0)
    assert torch.equal(labels[0], expected.labels)
    torch.testing.assert_close(boxes[0], expected.bboxes, atol=TOL, rtol=0)
    assert masks.dtype == torch.bool and expected.masks.any()
    # a mask pixel flips only where its logit is within float error of the threshold
    assert (masks[0] != expected.masks).float().mean() <= TOL


@pytest.mark.parametrize('fmt', ['onnx', 'torch-export'])
def test_sam_decoder_graph_gives_decode_for_points_boxes_and_masks(fmt, tmp_path, checkpoints):
    name = 'sam_vit-tiny_coco'
    path = export(tmp_path, name, checkpoints, fmt, '--part', 'decoder', '--dynamic-batch')
    model = init_model(CONFIGS[name], checkpoints[name])
    g = torch.Generator().manual_seed(0)
    embedding = torch.randn(1, 128, 16, 16, generator=g)
    no_mask = torch.zeros(3, 1, 64, 64)

    def decode(**prompts):
        """(multimask logits, IoUs), (single-mask logits, IoUs) of the eager model, at 128 px."""
        out = []
        with torch.no_grad():
            for multimask in (True, False):
                low, iou = model.decode(embedding, multimask_output=multimask, **prompts)
                out.append((model.postprocess_masks(low, (128, 128), (128, 128)), iou, low))
        return out

    def check(outputs, reference):
        masks, iou, low = outputs
        (multi, multi_iou, multi_low), (single, single_iou, single_low) = reference
        torch.testing.assert_close(masks[:, 1:], multi, atol=TOL, rtol=0)
        torch.testing.assert_close(masks[:, :1], single, atol=TOL, rtol=0)
        torch.testing.assert_close(iou, torch.cat([single_iou, multi_iou], 1), atol=TOL, rtol=0)
        torch.testing.assert_close(low, torch.cat([single_low, multi_low], 1), atol=TOL, rtol=0)

    # 3 prompts of 2 points each (the eager prompt encoder adds the padding point itself)
    points = torch.rand(3, 2, 2, generator=g) * 128
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
    padded = torch.cat([points, torch.zeros(3, 1, 2)], 1)
    padded_labels = torch.cat([labels, -torch.ones(3, 1, dtype=torch.long)], 1).float()
    outputs = run(path, fmt, embedding, padded, padded_labels, no_mask, torch.zeros(3))
    check(outputs, decode(point_coords=points, point_labels=labels))
    # the batch of 3 prompts is what 3 batches of 1 give
    for i in range(3):
        single = run(path, fmt, embedding, padded[i:i + 1], padded_labels[i:i + 1],
                     no_mask[:1], torch.zeros(1))
        torch.testing.assert_close(single[0], outputs[0][i:i + 1], atol=TOL, rtol=0)
    # boxes, as corner points labelled 2 and 3, and no padding point
    boxes = torch.tensor([[10.0, 20.0, 70.0, 90.0], [0.0, 0.0, 127.0, 127.0],
                          [50.0, 40.0, 60.0, 100.0]])
    corners = boxes.view(3, 2, 2)
    corner_labels = torch.tensor([[2.0, 3.0]]).expand(3, -1)
    check(run(path, fmt, embedding, corners, corner_labels, no_mask, torch.zeros(3)),
          decode(boxes=boxes))
    # one point plus an earlier prediction's low-res logits (a different number of points)
    mask_input = torch.randn(3, 1, 64, 64, generator=g) * 4
    first = [0, 2]  # the first point and the padding point
    check(run(path, fmt, embedding, padded[:, first], padded_labels[:, first], mask_input,
              torch.ones(3)),
          decode(point_coords=points[:, :1], point_labels=labels[:, :1], mask_inputs=mask_input))


def test_sam_encoder_graph_gives_the_image_embedding(tmp_path, checkpoints):
    # a landscape image, its longer side at the model's 128: the graph pads it to the square
    name = 'sam_vit-tiny_coco'
    path = export(tmp_path, name, checkpoints, 'torch-export', '--part', 'encoder',
                  '--input-size', '96', '128', '--dynamic-batch')
    model = init_model(CONFIGS[name], checkpoints[name])
    batch = images(2, (96, 128), seed=2)
    with torch.no_grad():
        expected = model.image_embedding(model.data_preprocessor(
            dict(inputs=list(batch)))['inputs'])
    (embeddings,) = run(path, 'torch-export', batch.float())
    torch.testing.assert_close(embeddings, expected, atol=TOL, rtol=0)
    (first,) = run(path, 'torch-export', batch[:1].float())
    torch.testing.assert_close(first, expected[:1], atol=TOL, rtol=0)


def test_bad_inputs_are_one_line_and_leave_no_file(tmp_path, checkpoints, capsys):
    from tests.test_cli import one_error_line
    seg, det, sam = (CONFIGS[n] for n in ('upernet_resnet18_ade20k', 'dino_vit-tiny_coco',
                                          'sam_vit-tiny_coco'))
    out = str(tmp_path / 'model.onnx')
    assert cli(['export', seg, checkpoints['upernet_resnet18_ade20k'], '--format', 'onx',
                '--out', out]) == 2
    assert "invalid choice: 'onx'" in capsys.readouterr().err
    assert cli(['export', seg, checkpoints['dino_vit-tiny_coco'], '--format', 'onnx',
                '--out', out]) == 1
    one_error_line(capsys, checkpoints['dino_vit-tiny_coco'], 'does not fit Segmentor')
    missing = str(tmp_path / 'missing.pth')
    assert cli(['export', seg, missing, '--format', 'onnx', '--out', out]) == 1
    one_error_line(capsys, f'checkpoint {missing} does not exist')
    assert cli(['export', sam, checkpoints['sam_vit-tiny_coco'], '--format', 'onnx',
                '--out', out]) == 1
    one_error_line(capsys, 'give --part encoder or --part decoder')
    assert cli(['export', det, checkpoints['dino_vit-tiny_coco'], '--format', 'onnx',
                '--out', out, '--dynamic-batch']) == 1
    one_error_line(capsys, 'fixed batch', '--batch-size')
    assert os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_earlier_file(tmp_path):
    out = tmp_path / 'model.onnx'
    out.write_text('the good export')

    def fail(path):
        with open(path, 'w') as f:
            f.write('half a graph')
        raise RuntimeError('exporter failed')

    with pytest.raises(RuntimeError, match='exporter failed'):
        write_atomically(str(out), fail)
    assert out.read_text() == 'the good export' and os.listdir(tmp_path) == ['model.onnx']

    def write(path):  # a graph and its external weights, as ONNX past 2 GB
        for name, text in ((path, 'graph'), (path + '.data', 'weights')):
            with open(name, 'w') as f:
                f.write(text)

    written = write_atomically(str(out), write)
    assert written == [str(out) + '.data', str(out)]
    assert out.read_text() == 'graph' and sorted(os.listdir(tmp_path)) == [
        'model.onnx', 'model.onnx.data']
