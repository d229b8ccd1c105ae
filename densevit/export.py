"""Inference graphs of densevit models, written as ONNX files or ``torch.export`` programs.

A graph is one of the modules below around a built model, with the data preprocessor's
normalisation inside, a fixed image size and, where the model allows, a dynamic batch:

    SegmentorGraph     image (B, 3, H, W) -> logits (B, K, H, W), labels (B, H, W)
    DetectorGraph      image (B, 3, H, W) -> boxes (B, N, 4), scores (B, N), labels (B, N)
                                             [, masks (B, N, H, W)]
    SamEncoderGraph    image (B, 3, H, W) -> image_embeddings (B, C, h, w)
    SamDecoderGraph    image_embeddings (1, C, h, w), point_coords (N, P, 2), point_labels (N, P),
                       mask_input (N, 1, 4h, 4w), has_mask_input (N,)
                       -> masks (N, 4, H, W), iou_predictions (N, 4), low_res_masks (N, 4, 4h, 4w)

Images are float32 pixel values 0..255 in the channel order of the config's pipeline (RGB, or
BGR where the preprocessor has ``bgr_to_rgb``), already resized as the test pipeline resizes
(for SAM: the longer side at ``image_size``). The graph pads them as the preprocessor pads
(after normalisation, at the bottom and right) and crops its outputs back to (H, W), so it
returns what ``model.predict`` returns for an image of that size: the segmentor's logits and
label map, the detector's ``pred_instances`` (boxes xyxy in pixels, masks thresholded at
``test_cfg.mask_thr_binary``), SAM's image embedding and mask logits. Test-time augmentation
(a segmentor's ``test_cfg.tta``) is not part of a graph.

The SAM decoder takes prompts as segment-anything's ONNX decoder does: points (x, y) in
model-input pixels with labels 1 (foreground), 0 (background), 2 and 3 (a box's top-left and
bottom-right corners) and -1 (padding: give one padding point when there is no box, as
segment-anything's prompt encoder adds), a low-res mask from an earlier prediction with
``has_mask_input`` 1 (else zeros and 0). Its outputs hold all four of the decoder's masks:
index 0 the single-mask output, 1..3 the three ambiguity-aware ones (``multimask_output``).

Both formats go through one ``torch.export`` capture; ONNX through PyTorch's dynamo exporter
(``torch.onnx.export(..., dynamo=True)``, which needs onnxscript), chosen over the TorchScript
exporter because that one is deprecated and cannot export UperNet's pyramid pooling
(``adaptive_avg_pool2d`` with sizes it cannot see), and so the two formats hold the same graph.
Opset 18 is the oldest the dynamo exporter writes without converting versions (its torchlib
opset; the default is 20), which widens the runtimes that load the file; ``grid_sample`` (the
deformable attention) needs 16 or later.
"""
from __future__ import annotations

import os
import os.path as osp
import shutil
import tempfile
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert

__all__ = ['FORMATS', 'OPSET', 'SAM_PARTS', 'SegmentorGraph', 'DetectorGraph', 'SamEncoderGraph',
           'SamDecoderGraph', 'model_kind', 'build_graph', 'capture', 'export_graph',
           'write_atomically', 'run_exported', 'compare']

FORMATS = ('onnx', 'torch-export')
OPSET = 18
SAM_PARTS = ('encoder', 'decoder')


class _Normalise(nn.Module):
    """The data preprocessor's pixel normalisation (and channel swap), then its padding of the
    batch to ``padded`` (H, W) at the bottom and right with ``pad_val``."""

    def __init__(self, preprocessor: nn.Module, padded: tuple[int, int]) -> None:
        super().__init__()
        # (3, 1, 1) buffers of SegDataPreprocessor and its subclasses, broadcast over (B, 3, H, W)
        self.register_buffer('mean', preprocessor.mean.detach().clone().float(), False)
        self.register_buffer('std', preprocessor.std.detach().clone().float(), False)
        self.bgr_to_rgb = bool(getattr(preprocessor, 'bgr_to_rgb', False))
        self.pad_val = float(getattr(preprocessor, 'pad_val', 0.0))
        self.padded = padded

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.bgr_to_rgb:
            image = image.flip(1)
        x = (image - self.mean) / self.std
        h, w = x.shape[-2:]
        if (h, w) != self.padded:
            x = F.pad(x, (0, self.padded[1] - w, 0, self.padded[0] - h), value=self.pad_val)
        return x


def _padded_size(size: tuple[int, int], divisor: int | None) -> tuple[int, int]:
    if not divisor:
        return size
    return tuple(-(-s // divisor) * divisor for s in size)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f'input size must be two positive integers (H, W); got {tuple(size)}')
    return int(size[0]), int(size[1])


class SegmentorGraph(nn.Module):
    """image (B, 3, H, W) float 0..255 -> logits (B, K, H, W) float, labels (B, H, W) int64.

    The segmentor's ``test_cfg`` mode (whole image or sliding window) on the image padded to the
    preprocessor's ``size_divisor``; logits cropped back to (H, W) and their argmax, as
    ``Segmentor.predict`` gives them in ``seg_logits`` and ``pred_sem_seg``. The batch is
    dynamic in whole-image mode; a sliding window stacks the windows of every image, one by one.
    """

    input_names = ('image',)
    output_names = ('logits', 'labels')
    dim_names = {0: 'batch'}

    def __init__(self, model: nn.Module, size: Sequence[int]) -> None:
        super().__init__()
        self.size = _check_size(size)
        preprocessor = model.data_preprocessor
        self.normalise = _Normalise(preprocessor, _padded_size(
            self.size, getattr(preprocessor, 'size_divisor', None)))
        self.model = model
        self.fixed_batch = None if model.test_cfg['mode'] == 'whole' else (
            "test_cfg mode='slide' loops over the windows of each image")

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        return (_example_image(batch, self.size),)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model.inference(self.normalise(image))
        logits = logits[..., :self.size[0], :self.size[1]]  # padding is at the bottom and right
        return logits, logits.argmax(1)


class DetectorGraph(nn.Module):
    """image (B, 3, H, W) float 0..255 -> boxes (B, N, 4) xyxy pixels, scores (B, N), labels
    (B, N) int64 and, for a mask head, masks (B, N, H, W) bool; N = ``test_cfg.max_per_img``
    (or fewer when the head has fewer query-class pairs), best first.

    As ``Detector.predict`` on images of (H, W) (the head sees the padding of the preprocessor's
    ``size_divisor`` as padding), with the same selection (``Detector.select``), box clipping and
    mask thresholding. The batch is fixed: the deformable attention op loops over the images of
    a batch, so a graph of it holds one copy per image.
    """

    input_names = ('image',)
    dim_names = {0: 'batch'}
    fixed_batch = 'the deformable attention op loops over the images of a batch'

    def __init__(self, model: nn.Module, size: Sequence[int]) -> None:
        super().__init__()
        self.size = _check_size(size)
        preprocessor = model.data_preprocessor
        padded = _padded_size(self.size, getattr(preprocessor, 'size_divisor', None))
        self.normalise = _Normalise(preprocessor, padded)
        mask = torch.ones(padded, dtype=torch.bool)
        mask[:self.size[0], :self.size[1]] = False
        self.register_buffer('padding_mask', mask, False)  # (Hp, Wp), True = padding
        self.model = model
        self.with_masks = bool(model.head.with_masks)
        self.output_names = ('boxes', 'scores', 'labels') + (('masks',) if self.with_masks else ())

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        return (_example_image(batch, self.size),)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.normalise(image)
        padding = self.padding_mask.expand(x.shape[0], -1, -1)
        preds = self.model.head.predict(self.model.extract_feat(x), padding)
        scores, labels, queries = self.model.select(preds['logits'])
        h, w = self.size
        # (B, Q, 4) -> (B, N, 4), the boxes of the selected queries, cxcywh in [0, 1] -> pixels
        boxes = preds['boxes'].gather(1, queries[..., None].expand(-1, -1, 4))
        limits = image.new_tensor([w, h, w, h])
        boxes = box_convert(boxes.float(), 'cxcywh', 'xyxy') * limits
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        if not self.with_masks:
            return boxes, scores, labels
        logits = preds['masks']
        # (B, Q, h4, w4) -> (B, N, h4, w4) -> (B, N, 4*h4, 4*w4), the padded input grid
        logits = logits.gather(1, queries[..., None, None].expand(-1, -1, *logits.shape[-2:]))
        logits = F.interpolate(logits.float(), size=(4 * logits.shape[-2], 4 * logits.shape[-1]),
                               mode='bilinear', align_corners=False)[..., :h, :w]
        masks = logits.sigmoid() > self.model.test_cfg['mask_thr_binary']
        return boxes, scores, labels, masks


class SamEncoderGraph(nn.Module):
    """image (B, 3, H, W) float 0..255, H and W at most ``image_size`` -> image_embeddings
    (B, C, h, w): SAM's preprocessing (normalise, pad to the square input) and image encoder,
    as ``PromptableSegmenter.image_embedding`` after ``SamDataPreprocessor``.

    Export it at the size of the resized images (the longer side at ``image_size``), e.g.
    768 x 1024 for 3:4 photos and SAM's 1024. A square graph takes smaller images padded at the
    bottom and right with the pixel mean (what normalises to SAM's zero padding).
    """

    input_names = ('image',)
    output_names = ('image_embeddings',)
    dim_names = {0: 'batch'}
    fixed_batch = None

    def __init__(self, model: nn.Module, size: Sequence[int]) -> None:
        super().__init__()
        self.size = _check_size(size)
        side = model.image_size
        if max(self.size) > side:
            raise ValueError(f'input size {self.size} is larger than the model\'s square input '
                             f'({side}, {side}); resize the longer side to {side}')
        self.normalise = _Normalise(model.data_preprocessor, (side, side))
        # only the image encoder's parts, so the graph holds no prompt or mask weights
        self.backbone, self.neck = model.backbone, model.neck
        self.in_feature = model.in_feature

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        return (_example_image(batch, self.size),)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from densevit.models.tasks.neck_chain import apply_neck
        return apply_neck(self.neck, self.backbone(self.normalise(image)))[self.in_feature]


class SamDecoderGraph(nn.Module):
    """SAM's prompt encoder and mask decoder on one image's embedding, for N prompts of P points.

    Inputs: image_embeddings (1, C, h, w); point_coords (N, P, 2) float (x, y) in model-input
    pixels; point_labels (N, P) float (1, 0, 2, 3 or -1, see the module docstring); mask_input
    (N, 1, 4h, 4w) float low-res logits; has_mask_input (N,) float, 1 where mask_input holds a
    mask. Outputs: masks (N, 4, H, W) logits at the input size (H, W) the encoder graph took,
    iou_predictions (N, 4), low_res_masks (N, 4, 4h, 4w); a pixel is in a mask where its logit
    is > 0. The number of points P is dynamic.
    """

    input_names = ('image_embeddings', 'point_coords', 'point_labels', 'mask_input',
                   'has_mask_input')
    output_names = ('masks', 'iou_predictions', 'low_res_masks')
    fixed_batch = None
    dim_names = {0: 'prompts', 1: 'points'}

    def __init__(self, model: nn.Module, size: Sequence[int]) -> None:
        super().__init__()
        self.size = _check_size(size)
        self.image_size = model.image_size
        if max(self.size) > self.image_size:
            raise ValueError(f'input size {self.size} is larger than the model\'s square input '
                             f'({self.image_size}, {self.image_size})')
        self.prompt_encoder, self.mask_decoder = model.prompt_encoder, model.mask_decoder
        self.channels = self.prompt_encoder.embed_dim
        self.embedding_size = tuple(self.prompt_encoder.image_embedding_size)

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        h, w = self.embedding_size
        generator = torch.Generator().manual_seed(0)
        coords = torch.rand(batch, 2, 2, generator=generator) * torch.tensor(self.size[::-1])
        return (torch.randn(1, self.channels, h, w, generator=generator), coords,
                torch.tensor([[1.0, -1.0]]).expand(batch, -1).contiguous(),
                torch.zeros(batch, 1, 4 * h, 4 * w), torch.zeros(batch))

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, P, 2), (N, P) -> (N, P, C): segment-anything's ``PromptEncoder._embed_points`` and
        ``_embed_boxes`` at once (box corners are points labelled 2 and 3), with masks instead of
        its boolean indexing, which a graph cannot hold."""
        encoder = self.prompt_encoder
        embedding = encoder.pe_layer.forward_with_coords(coords + 0.5, encoder.input_image_size)
        labels = labels[..., None]  # (N, P) -> (N, P, 1), against (N, P, C)
        embedding = torch.where(labels == -1, encoder.not_a_point_embed.weight, embedding)
        for label, table in enumerate(encoder.point_embeddings):
            embedding = embedding + table.weight * (labels == label)
        return embedding

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor, mask_input: torch.Tensor,
                has_mask_input: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoder = self.prompt_encoder
        sparse = self._embed_points(point_coords, point_labels)
        has_mask = has_mask_input.view(-1, 1, 1, 1)
        dense = (has_mask * encoder.mask_downscaling(mask_input)
                 + (1 - has_mask) * encoder.no_mask_embed.weight.view(1, -1, 1, 1))
        low_res, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings, image_pe=encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        masks = F.interpolate(low_res, (self.image_size, self.image_size), mode='bilinear',
                              align_corners=False)[..., :self.size[0], :self.size[1]]
        return masks, iou, low_res


def _example_image(batch: int, size: tuple[int, int]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, *size), generator=generator).float()


def model_kind(model: nn.Module) -> str:
    """'segmentor', 'detector' or 'sam' for a model an export graph exists for."""
    from densevit.models.tasks.detector import Detector
    from densevit.models.tasks.promptable_segmenter import PromptableSegmenter
    from densevit.models.tasks.segmentor import Segmentor
    for kind, cls in (('segmentor', Segmentor), ('detector', Detector),
                      ('sam', PromptableSegmenter)):
        if isinstance(model, cls):
            return kind
    raise TypeError(f'no export graph for a {type(model).__name__}; densevit exports a '
                    'Segmentor, a Detector and a PromptableSegmenter (SAM: its encoder and '
                    'decoder); for a PromptedInstanceSegmenter export its detector and '
                    'segmenter configs one by one')


def build_graph(model: nn.Module, size: Sequence[int], part: str | None = None) -> nn.Module:
    """The export graph of an eval-mode ``model`` at image size (H, W); ``part`` ('encoder' or
    'decoder') is for SAM models only, where it is required."""
    kind = model_kind(model)
    if kind != 'sam':
        if part is not None:
            raise ValueError(f'part {part!r} applies to SAM models only; a {type(model).__name__} '
                             'exports as one graph')
        return (SegmentorGraph if kind == 'segmentor' else DetectorGraph)(model, size)
    if part not in SAM_PARTS:
        raise ValueError(f'a {type(model).__name__} exports as two graphs: give part '
                         f'{" or ".join(map(repr, SAM_PARTS))}, not {part!r}')
    return (SamEncoderGraph if part == 'encoder' else SamDecoderGraph)(model, size)


def _dynamic_shapes(graph: nn.Module, dynamic_batch: bool) -> tuple | None:
    """torch.export's ``dynamic_shapes``: the batch (dim 0 of every input but SAM's one image
    embedding) when asked, and always the decoder's number of points."""
    from torch.export import Dim
    batch = Dim('batch', min=1) if dynamic_batch else None
    if isinstance(graph, SamDecoderGraph):
        points = Dim('points', min=1)
        per_prompt = {0: batch} if batch is not None else {}
        return (None, {**per_prompt, 1: points}, {**per_prompt, 1: points},
                per_prompt or None, per_prompt or None)
    if not dynamic_batch:
        return None
    return tuple({0: batch} for _ in graph.input_names)


class _NoGrad(nn.Module):
    """``graph`` under ``torch.no_grad``, inside the exported program: a loaded program then
    runs without the caller's ``no_grad`` too (the deformable attention's inference path writes
    into its outputs, which autograd refuses for tensors that need gradients)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.net = graph  # not "graph": the unlifted program is a GraphModule, which has one

    def forward(self, *inputs: torch.Tensor):
        with torch.no_grad():
            return self.net(*inputs)


def capture(graph: nn.Module, *, batch_size: int = 1,
            dynamic_batch: bool = False) -> torch.export.ExportedProgram:
    """``torch.export`` of ``graph`` on example inputs of ``batch_size`` (2 at least when the
    batch is dynamic: torch.export fixes a dimension it sees at size 1)."""
    if dynamic_batch and graph.fixed_batch:
        raise ValueError(f'a {type(graph).__name__} has a fixed batch ({graph.fixed_batch}); '
                         'export it at the batch size you run it with')
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f'batch size must be a positive integer; got {batch_size!r}')
    inputs = graph.example_inputs(max(int(batch_size), 2) if dynamic_batch else int(batch_size))
    graph.eval()
    try:
        # traced with gradients on, so that the program records _NoGrad's switch
        shapes = _dynamic_shapes(graph, dynamic_batch)
        with torch.enable_grad():
            return torch.export.export(_NoGrad(graph), inputs,  # *inputs: one tuple of shapes
                                       dynamic_shapes=None if shapes is None else (shapes,))
    except Exception as exc:
        if dynamic_batch and 'Constraints violated (batch)' in str(exc):
            # e.g. a ViT's relative-position attention that splits its rows by a memory budget
            # over the batch: the graph differs from one batch size to the next
            raise ValueError(f'{type(graph).__name__}: this model\'s graph changes with the batch '
                             'size (it splits work by it); export it with a fixed batch') from exc
        raise


def export_graph(graph: nn.Module, out: str, fmt: str, *, batch_size: int = 1,
                 dynamic_batch: bool = False) -> list[str]:
    """Export ``graph`` to ``out`` as ``fmt`` ('onnx' or 'torch-export'); returns the files
    written (an ONNX model over 2 GB keeps its weights in ``out + '.data'`` beside it).

    ``out`` is replaced only once the whole export has succeeded (``write_atomically``)."""
    if fmt not in FORMATS:
        import difflib
        close = difflib.get_close_matches(str(fmt), FORMATS, n=1)
        raise ValueError(f'unknown format {fmt!r}; ' + (f'did you mean {close[0]!r}?' if close
                                                        else f'choose {" or ".join(FORMATS)}'))
    if fmt == 'onnx':
        _require('onnxscript', 'ONNX export (torch.onnx\'s dynamo exporter)')
    program = capture(graph, batch_size=batch_size, dynamic_batch=dynamic_batch)
    if fmt == 'torch-export':
        return write_atomically(out, lambda path: torch.export.save(program, path))

    def write_onnx(path: str) -> None:
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=OPSET,
                                         input_names=list(graph.input_names),
                                         output_names=list(graph.output_names), verbose=False)
        _name_dynamic_dims(onnx_program.model.graph, program, graph.dim_names)
        onnx_program.save(path)  # external data only past protobuf's 2 GB limit

    return write_atomically(out, write_onnx)


def _name_dynamic_dims(onnx_graph, program: torch.export.ExportedProgram,
                       dim_names: dict[int, str]) -> None:
    """Name the ONNX graph's dynamic dimensions by their axis in the inputs (``dim_names``,
    e.g. 'batch'; the exporter names them after torch.export's symbols, 's40'), on its inputs
    and outputs."""
    import onnx_ir as ir
    names = {}
    placeholders = [node for node in program.graph.nodes if node.op == 'placeholder'
                    and node.name in program.graph_signature.user_inputs]
    for node in placeholders:
        for axis, dim in enumerate(node.meta['val'].shape):
            if isinstance(dim, torch.SymInt):
                names[str(dim)] = dim_names.get(axis, str(dim))
    for value in list(onnx_graph.inputs) + list(onnx_graph.outputs):
        if value.shape is None:
            continue
        dims = [ir.SymbolicDim(names.get(str(d.value), d.value))
                if isinstance(d, ir.SymbolicDim) else d for d in value.shape]
        value.shape = ir.Shape(dims)


def _require(module: str, what: str) -> None:
    import importlib.util
    if importlib.util.find_spec(module) is None:
        raise ImportError(f'{what} needs {module}, which is not installed; '
                          'pip install "densevit[export]" (onnx, onnxscript, onnxruntime)')


def run_exported(path: str, fmt: str, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Run an exported graph on ``inputs``: an ONNX file with onnxruntime (CPU), a
    torch.export program with ``torch.export.load``."""
    if fmt == 'onnx':
        _require('onnxruntime', 'running an ONNX graph')
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
        feed = {arg.name: t.numpy() for arg, t in zip(session.get_inputs(), inputs)}
        return [torch.from_numpy(out) for out in session.run(None, feed)]
    with torch.no_grad():
        outputs = torch.export.load(path).module()(*inputs)
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def compare(graph: nn.Module, path: str, fmt: str,
            batch_size: int = 1) -> dict[str, tuple[float, str]]:
    """{output: (difference, what it is)} of the exported file against ``graph`` on one example
    input (random pixels, SAM prompts at random points): the max absolute difference of a float
    output, the fraction of elements that differ of a boolean or integer one."""
    inputs = graph.example_inputs(batch_size)
    with torch.no_grad():
        eager = graph(*inputs)
    eager = list(eager) if isinstance(eager, tuple) else [eager]
    out = {}
    for name, a, b in zip(graph.output_names, run_exported(path, fmt, inputs), eager):
        if tuple(a.shape) != tuple(b.shape):
            raise RuntimeError(f'{path}: output {name!r} has shape {tuple(a.shape)}, the model '
                               f'gives {tuple(b.shape)}')
        if not b.numel():
            out[name] = (0.0, 'empty')
        elif b.is_floating_point():
            out[name] = (float((a.float() - b.float()).abs().max()), 'max abs difference')
        else:
            out[name] = (float((a != b).float().mean()), 'fraction differing')
    return out


def write_atomically(out: str, write: Callable[[str], None]) -> list[str]:
    """Call ``write(path)`` on a path in a fresh folder beside ``out``, then move what it wrote
    into ``out``'s folder (data files first, ``out`` itself last, each by an atomic rename):
    a failed or interrupted export leaves an earlier ``out`` as it was. Returns the paths."""
    folder = osp.dirname(osp.abspath(out))
    name = osp.basename(out)
    if not name:
        raise ValueError(f'output {out!r} names a folder; give a file name')
    if osp.isdir(out):
        raise IsADirectoryError(f'output {out!r} is a folder; give a file name')
    os.makedirs(folder, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f'.{name}.', suffix='.partial', dir=folder)
    try:
        write(osp.join(staging, name))
        written = sorted(os.listdir(staging), key=lambda f: f == name)
        if name not in written:
            raise RuntimeError(f'the exporter wrote no {name} (only {written})')
        for file in written:
            os.replace(osp.join(staging, file), osp.join(folder, file))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [osp.join(folder, file) for file in written]
