"""Registries resolve densevit types through mmengine's roots, name typos' closest matches, and
accept third-party modules through custom_imports; data_root moves every path of a config."""
import sys
import textwrap

import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.registry import MODELS as ROOT_MODELS
from torch import nn

from densevit.apis.config import load_config, switch_data_root
from densevit.registry import MODELS


def test_unknown_type_names_closest_registered():
    with pytest.raises(KeyError, match=r"'Segmentr' is not a registered model type.*Segmentor"):
        MODELS.build(dict(type='Segmentr'))


def test_root_registry_builds_densevit_types_in_scope():
    with DefaultScope.overwrite_default_scope('densevit'):
        loss = ROOT_MODELS.build(dict(type='CrossEntropyLoss'))
    assert type(loss).__module__ == 'densevit.models.losses'


def test_custom_imports_register_third_party_module(tmp_path, monkeypatch):
    (tmp_path / 'my_head.py').write_text(textwrap.dedent('''
        from torch import nn
        from densevit.registry import MODELS

        @MODELS.register_module()
        class MyThirdPartyHead(nn.Identity):
            pass
    '''))
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text("custom_imports = dict(imports=['my_head'], allow_failed_imports=False)\n"
                        "model = dict(type='MyThirdPartyHead')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = Config.fromfile(str(cfg_file))
    assert isinstance(MODELS.build(cfg.model), nn.Identity)
    sys.modules.pop('my_head', None)


def test_data_root_switches_every_path(tmp_path):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text(textwrap.dedent('''
        data_root = 'data/coco/'
        train_dataloader = dict(dataset=dict(data_root=data_root,
                                             ann_file='annotations/train.json'))
        val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/val.json')
        test_evaluator = [val_evaluator, dict(type='X', files=(data_root + 'a', 'other/b'))]
        unrelated = 'data/cocoa/elsewhere'
    '''))
    cfg = load_config(str(cfg_file), {'data_root': '/mnt/copy', 'unrelated': 'kept'})
    assert cfg.data_root == '/mnt/copy/'
    assert cfg.train_dataloader.dataset.data_root == '/mnt/copy/'
    assert cfg.val_evaluator.ann_file == '/mnt/copy/annotations/val.json'
    assert cfg.test_evaluator[0].ann_file == '/mnt/copy/annotations/val.json'
    assert tuple(cfg.test_evaluator[1].files) == ('/mnt/copy/a', 'other/b')
    assert cfg.unrelated == 'kept'


def test_switch_data_root_needs_a_data_root():
    with pytest.raises(KeyError, match='data_root'):
        switch_data_root(Config(dict(a=1)), 'x/')
