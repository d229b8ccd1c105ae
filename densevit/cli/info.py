"""``densevit info CONFIG``: what a config builds, before any training.

Prints the parameters (total and per top-level part), the FLOPs of one forward at the config's
input size (mmengine.analysis), the feature maps the backbone and neck produce at that size
(name, channels, stride, size; the feature contract of densevit/models/contract.py), and the
weights the config expects with the converter command its header gives.
"""
from __future__ import annotations

import argparse
import math
import os.path as osp
import re
from typing import Any

from . import CLIError

_CONVERT = re.compile(r'python tools/convert_checkpoint\.py\s')


def count_parameters(model) -> tuple[int, dict[str, int]]:
    """(total, {top-level child name: count}); parameters shared by two parts count once, in
    the first."""
    seen, parts = set(), {}
    for name, child in model.named_children():
        params = [p for p in child.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        parts[name] = sum(p.numel() for p in params)
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        parts['(own)'] = sum(p.numel() for p in rest)
    return sum(p.numel() for p in model.parameters()), parts


def _steps(pipeline) -> list[dict]:
    """Every transform dict of a pipeline, nested choices included, in order."""
    out = []
    for step in pipeline or []:
        if isinstance(step, (list, tuple)):
            out += _steps(step)
        elif isinstance(step, dict):
            out.append(step)
            for key in ('transforms', 'transforms_list'):
                out += _steps(step.get(key))
    return out


def input_size(cfg) -> tuple[tuple[int, int], str]:
    """((H, W), how it was found) of one image as the model sees it at test time: a square image
    resized by the test pipeline (or SAM's ``image_size``), padded to the preprocessor's
    ``size_divisor``."""
    preprocessor = cfg.model.get('data_preprocessor') or {}
    side, source = None, None
    if preprocessor.get('image_size'):
        side = int(preprocessor['image_size'])
        source = f'the data preprocessor\'s image_size={side}'
    else:
        pipeline = cfg.get('test_dataloader', {}).get('dataset', {}).get('pipeline')
        for step in _steps(pipeline):
            if step.get('type') == 'Resize' and step.get('scale') is not None:
                scale = step['scale']
                scale = (scale, scale) if isinstance(scale, int) else tuple(scale)
                side = min(scale) if step.get('keep_ratio', True) else None
                if side is None:  # exact (w, h)
                    w, h = scale
                    return _pad((h, w), preprocessor), f'the test pipeline\'s Resize(scale={scale})'
                source = f'a square image through the test pipeline\'s Resize(scale={scale})'
                break
            if step.get('type') == 'RandomChoiceResize' and step.get('scales'):
                side = max(step['scales'])
                if step.get('max_size'):
                    side = min(side, int(step['max_size']))
                source = (f'a square image through the test pipeline\'s RandomChoiceResize '
                          f'(short side {side})')
                break
    if side is None and preprocessor.get('size'):
        h, w = preprocessor['size']
        return _pad((int(h), int(w)), preprocessor), (
            f'the data preprocessor\'s size={tuple(preprocessor["size"])}: the test pipeline does '
            'not resize')
    backbone_size = (cfg.model.get('backbone') or {}).get('img_size')
    if side is None and backbone_size:
        side = int(backbone_size if isinstance(backbone_size, int) else backbone_size[0])
        source = f'the backbone\'s img_size={backbone_size}: the test pipeline does not resize'
    if side is None:
        raise CLIError(f'{cfg.filename}: cannot tell the input size (no Resize in the test '
                       'pipeline, no data_preprocessor image_size); give --size H W')
    return _pad((side, side), preprocessor), source


def _pad(size: tuple[int, int], preprocessor: dict) -> tuple[int, int]:
    divisor = preprocessor.get('size_divisor')
    if not divisor:
        return size
    return tuple(math.ceil(s / divisor) * divisor for s in size)


def _necks(model) -> list[tuple[str, Any]]:
    """[(name, neck)] in the order they apply: none, one, or a sequence (``ModuleList``)."""
    from torch import nn
    neck = getattr(model, 'neck', None)
    if neck is None:
        return []
    if isinstance(neck, (nn.ModuleList, nn.Sequential)):
        return [(f'neck.{i}', part) for i, part in enumerate(neck)]
    return [('neck', neck)]


def feature_maps(model, size: tuple[int, int]) -> list[tuple[str, str, int, int, tuple]]:
    """[(part, name, channels, stride, (h, w))] of the backbone's and neck's maps for one
    zero image of ``size``, the stride as each part declares it in ``out_features``."""
    import torch
    rows = []
    x = torch.zeros(1, 3, *size)
    with torch.no_grad():
        features = model.backbone(x)
        parts = [('backbone', model.backbone, features)]
        for part, neck in _necks(model):
            features = neck(features)
            parts.append((part, neck, features))
    for part, module, maps in parts:
        specs = getattr(module, 'out_features', {})
        for name, tensor in maps.items():
            spec = specs.get(name)
            rows.append((part, name, tensor.shape[1], spec.stride if spec else None,
                         tuple(tensor.shape[-2:])))
    return rows


def attention_flops(inputs: list, outputs: list) -> int:
    """FLOPs of ``aten::scaled_dot_product_attention``, which mmengine's FlopAnalyzer does not
    count on its own: its two matrix products, ``q @ k^T`` and ``attn @ v``, one multiply-add =
    1 FLOP as the analyzer counts ``matmul``. Query (..., L, E), key (..., S, E), value
    (..., S, Ev): L * S * (E + Ev) per batch and head. The softmax is not counted, as the
    analyzer leaves element-wise operations out."""
    from mmengine.analysis.jit_handles import get_shape
    query, key, value = (get_shape(tensor) for tensor in inputs[:3])
    *batch, length, dim = query
    return math.prod(batch) * length * key[-2] * (dim + value[-1])


def neighborhood_attention_flops(inputs: list, outputs: list) -> int:
    """FLOPs of densevit's ``densevit::na2d_tiled`` (neighborhood attention, what a traced NAT /
    DiNAT records): each query meets kh * kw keys, so ``q . k`` and ``attn @ v`` cost
    B * H * W * heads * kh * kw * 2 * head_dim multiply-adds (counted as FLOPs, as
    :func:`attention_flops`); the bias and softmax are element-wise and not counted."""
    from mmengine.analysis.jit_handles import get_shape
    batch, height, width, heads, dim = get_shape(inputs[0])
    kernel = inputs[3].toIValue()  # a constant list, or a list built from constants
    if kernel is None:
        kernel = [value.toIValue() for value in inputs[3].node().inputs()]
    return batch * height * width * heads * math.prod(kernel) * 2 * dim


def count_flops(model, size: tuple[int, int]) -> tuple[int, dict[str, int], str]:
    """(total, {top-level part: flops}, what was measured): one forward of a (1, 3, H, W) batch
    in ``mode='tensor'`` (backbone, neck, head; no post-processing), counted by mmengine's
    FlopAnalyzer (one multiply-add = one FLOP, as fvcore), attention included
    (:func:`attention_flops`, :func:`neighborhood_attention_flops`). Falls back to the backbone and neck
    when the whole model cannot be traced."""
    import torch
    from mmengine.analysis import FlopAnalyzer

    class _Features(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.backbone = model.backbone
            self.necks = torch.nn.ModuleList(neck for _, neck in _necks(model))

        def forward(self, x):
            features = self.backbone(x)
            for neck in self.necks:
                features = neck(features)
            return features

    x = torch.zeros(1, 3, *size)
    candidates = [(model, 'one forward in mode=\'tensor\' (raw outputs, no post-processing; '
                   'for a PromptableSegmenter the image embedding)')]
    if hasattr(model, 'backbone'):
        candidates.append((_Features(model), 'backbone and neck only (the whole model does not '
                           'trace)'))
    error = None
    for module, what in candidates:
        try:
            analyzer = FlopAnalyzer(module, (x,))
            analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            analyzer.tracer_warnings('none')
            analyzer.set_op_handle('aten::scaled_dot_product_attention', attention_flops)
            analyzer.set_op_handle('densevit::na2d_tiled', neighborhood_attention_flops)
            total = analyzer.total()
            by_module = analyzer.by_module()
        except Exception as exc:  # noqa: BLE001  (tracing fails on data-dependent control flow)
            error = exc
            continue
        parts = {name: by_module.get(name, 0) for name, _ in module.named_children()}
        return total, parts, what
    raise CLIError(f'FLOPs could not be counted: {error}')


def expected_weights(cfg) -> list[tuple[str, str]]:
    """[(config key, path)] of the files the config loads: ``load_from`` and every
    ``*_checkpoint`` / ``checkpoint`` key of its model."""
    found = []
    if cfg.get('load_from'):
        found.append(('load_from', cfg.load_from))

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if (key == 'checkpoint' or key.endswith('_checkpoint')) and \
                        isinstance(value, str):
                    found.append((f'{path}.{key}', value))
                else:
                    walk(value, f'{path}.{key}')
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f'{path}[{i}]')

    walk(cfg.model, 'model')
    return found


def config_header(config: str) -> list[str]:
    """The text of the comment lines that open a config file, without their ``#``."""
    header = []
    with open(config, encoding='utf-8') as f:
        for line in f.read().splitlines():
            if not line.startswith('#'):
                break
            header.append(line.lstrip('#').strip())
    return header


def converter_commands(config: str) -> list[str]:
    """The ``python tools/convert_checkpoint.py ...`` commands of the config's header comment
    (continuation lines joined), from the config or, when it has none, its ``_base_`` files."""
    todo, seen = [osp.abspath(config)], set()
    while todo:
        path = todo.pop(0)
        if path in seen or not osp.isfile(path):
            continue
        seen.add(path)
        commands, current = [], None
        for line in config_header(path):
            if current is not None:
                current += ' ' + line
            elif _CONVERT.search(line):
                current = line[_CONVERT.search(line).start():]
            if current is not None and not current.endswith('\\'):
                commands.append(current)
                current = None
            elif current is not None:
                current = current[:-1].rstrip()
        if commands:
            return commands
        with open(path, encoding='utf-8') as f:
            text = f.read()
        base = re.search(r"^_base_\s*=\s*(.+?)(?:\n\S|\Z)", text, re.M | re.S)
        if base:
            todo += [osp.normpath(osp.join(osp.dirname(path), name))
                     for name in re.findall(r"['\"]([^'\"]+\.py)['\"]", base.group(1))]
    return []


def _count(n: float) -> str:
    for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if n >= scale:
            return f'{n / scale:.2f}{unit}'
    return str(int(n))


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n')[0].strip('`:'),
                                     epilog=' '.join(__doc__.split('\n\n')[1].split()))
    parser.add_argument('config', help='config file path')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size instead of the config\'s')
    parser.add_argument('--no-flops', action='store_true', help='skip the FLOP count (fast)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config keys, e.g. model.backbone.arch=small')
    args = parser.parse_args(argv)

    import densevit.models  # noqa: F401  (registers the model types)
    from densevit.apis import load_config
    from densevit.registry import MODELS
    cfg = load_config(args.config, args.cfg_options)
    model = MODELS.build(cfg.model).eval()
    total, parts = count_parameters(model)
    if args.size:
        size, source = tuple(args.size), '--size'
    else:
        size, source = input_size(cfg)
        divisor = (cfg.model.get('data_preprocessor') or {}).get('size_divisor')
        if divisor and f'{size[0]}' not in source:
            source += f', padded to a multiple of {divisor}'
    info = dict(config=args.config, model=cfg.model.type, parameters=total, parts=parts,
                input_size=size)

    print(f'{args.config}: {cfg.model.type}')
    print(f'parameters: {total:,} ({_count(total)})')
    for name, count in parts.items():
        print(f'  {name:<16} {count:>14,}')
    print(f'input: 1x3x{size[0]}x{size[1]} ({source})')
    if not args.no_flops:
        flops, by_part, what = count_flops(model, size)
        info['flops'] = flops
        print(f'FLOPs: {_count(flops)} for {what}; one multiply-add = 1 FLOP')
        for name, count in by_part.items():
            print(f'  {name:<16} {_count(count):>10}')
    if hasattr(model, 'backbone'):
        rows = feature_maps(model, size)
        info['features'] = rows
        print('feature maps:')
        for part, name, channels, stride, hw in rows:
            print(f'  {part:<9} {name:<4} channels {channels:<5} stride {stride!s:<3} '
                  f'size {hw[0]}x{hw[1]}')
    else:
        print(f'feature maps: {cfg.model.type} has no backbone of its own '
              f'(parts: {", ".join(parts)})')
    weights = expected_weights(cfg)
    info['weights'] = weights
    if weights:
        print('weights:')
        for key, path in weights:
            state = 'present' if osp.exists(path) else 'missing'
            print(f'  {key} = {path} ({state})')
    else:
        print('weights: none (trains from its initialisation)')
    commands = converter_commands(args.config)
    info['convert'] = commands
    for command in commands:
        print(f'  convert: {command}')
    return info
