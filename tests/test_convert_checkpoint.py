"""tools/convert_checkpoint.py: official files in, densevit state dicts out, with a load report."""
import pickle
import textwrap

import numpy as np
import pytest
import timm
import torch

from densevit.checkpoint import converters, get_converter
from densevit.checkpoint.reading import read_state_dict
from tools.convert_checkpoint import main as convert_main


def test_every_kind_is_listed_and_unknown_kinds_are_named():
    assert {'timm_vit', 'mae', 'deit', 'sam', 'vitdet', 'swin', 'nat', 'dinat'} <= set(converters())
    with pytest.raises(KeyError, match=r"'vit_b'.*known kinds: .*sam"):
        get_converter('vit_b')


def test_timm_vit_file_converts_and_loads_with_an_empty_report(tmp_path, capsys):
    reference = timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=2)
    torch.save(reference.state_dict(), tmp_path / 'vit.pth')
    config = tmp_path / 'vit_tiny.py'
    config.write_text(textwrap.dedent('''
        model = dict(type='ImageEncoder', backbone=dict(
            type='ViT', arch='tiny', depth=2, window_size=0, global_attn_indexes=(),
            use_rel_pos=False, final_norm=True, pretrain_img_size=224))
    '''))
    report = convert_main(['timm_vit', str(tmp_path / 'vit.pth'), str(tmp_path / 'out.pth'),
                           '--config', str(config)])
    assert report.clean and not report.resized
    printed = capsys.readouterr().out
    assert 'missing keys (0)' in printed and 'unexpected keys (0)' in printed
    converted = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert 'cls_token' not in converted and not any(k.startswith('head.') for k in converted)


def test_detectron2_pickle_is_read_without_arbitrary_unpickling(tmp_path):
    weights = {'model': {'backbone.net.pos_embed': np.zeros((1, 197, 8), np.float32)}}
    (tmp_path / 'ok.pkl').write_bytes(pickle.dumps(weights))
    state = read_state_dict(str(tmp_path / 'ok.pkl'))
    assert state['backbone.net.pos_embed'].shape == (1, 197, 8)

    class Payload:
        def __reduce__(self):
            return (print, ('pwned',))
    (tmp_path / 'evil.pkl').write_bytes(pickle.dumps({'model': {'x': Payload()}}))
    with pytest.raises(pickle.UnpicklingError, match='builtins.print'):
        read_state_dict(str(tmp_path / 'evil.pkl'))
