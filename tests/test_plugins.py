"""Outside plugins: a distribution's ``densevit.plugins`` entry point, and a config's
``custom_imports``, make its registered backbone buildable from a config.

The plugin is a real installed-looking distribution written into tmp_path: a package and a
``<name>.dist-info`` folder with METADATA and entry_points.txt, found by importlib.metadata once
the folder is on sys.path, as pip leaves them in site-packages.
"""
import os.path as osp
import textwrap

import pytest
import torch

from densevit.apis import load_config
from densevit.cli import main as cli
from densevit.registry import MODELS
from tests.conftest import ROOT

QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'upernet_resnet18_ade20k.py')

# A backbone as an outside package writes one: the feature contract (densevit.models.contract),
# registered in densevit's MODELS registry when its module is imported.
BACKBONE = '''
import torch
from torch import nn
from densevit.models.contract import Backbone, FeatureSpec
from densevit.registry import MODELS


@MODELS.register_module()
class {name}(Backbone):
    """Four strided convolutions: maps s4..s32 of {{width}}, 2 {{width}}, ... channels."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 4, stride=4)
        self.downs = nn.ModuleList(nn.Conv2d(width * 2 ** i, width * 2 ** (i + 1), 2, stride=2)
                                   for i in range(3))
        self.out_features = {{f's{{4 * 2 ** i}}': FeatureSpec(width * 2 ** i, 4 * 2 ** i)
                             for i in range(4)}}
        self.num_layers = 4

    def forward(self, x):
        x = self.stem(x)
        maps = {{'s4': x}}
        for i, down in enumerate(self.downs):
            x = down(x)
            maps[f's{{8 * 2 ** i}}'] = x
        return maps

    def layer_id(self, param_name):
        return 0 if param_name.startswith('stem') else int(param_name.split('.')[1]) + 1
'''


def write_distribution(root, package: str, entry_points: dict[str, str], source: str) -> None:
    """``root/package/__init__.py`` and ``root/<package>-0.1.dist-info`` declaring the entry
    points of the ``densevit.plugins`` group."""
    (root / package).mkdir()
    (root / package / '__init__.py').write_text(source)
    info = root / f'{package}-0.1.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n')
    lines = '\n'.join(f'{name} = {value}' for name, value in entry_points.items())
    (info / 'entry_points.txt').write_text(f'[densevit.plugins]\n{lines}\n')


def plugin_config(tmp_path, backbone: str, extra: str = '') -> str:
    """The quickstart UperNet with its backbone swapped by one entry for ``backbone``."""
    path = tmp_path / 'upernet_plugin.py'
    path.write_text(textwrap.dedent(f'''\
        _base_ = '{QUICKSTART}'
        {extra}
        model = dict(backbone=dict(_delete_=True, type='{backbone}', width=8))
        '''))
    return str(path)


def test_entry_point_plugin_backbone_builds_through_a_config(tmp_path, monkeypatch):
    write_distribution(tmp_path, 'dvplugin_entry', {'tiny_backbone': 'dvplugin_entry'},
                       BACKBONE.format(name='EntryPointBackbone'))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert 'EntryPointBackbone' not in MODELS
    # load_config imports the plugin before it reads the config, and the option check sees
    # the plugin's keywords (width) as the registered class's
    cfg = load_config(plugin_config(tmp_path, 'EntryPointBackbone'),
                      {'model.backbone.width': 4})
    model = MODELS.build(cfg.model).eval()
    from densevit.plugins import load_plugins
    assert load_plugins()['tiny_backbone'] == 'dvplugin_entry'
    assert type(model.backbone).__name__ == 'EntryPointBackbone'
    # UperNet took its input channels from the plugin's declaration (width 4: 4, 8, 16, 32)
    lateral = [block[0].in_channels for block in model.decode_head.lateral_convs]
    assert lateral == [4, 8, 16]
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 64, 64), mode='tensor')
    assert tuple(logits.shape) == (1, 150, 16, 16)  # s4 logits of the 150 ADE20K classes


def test_list_models_lists_an_entry_point_plugin(tmp_path, monkeypatch, capsys):
    write_distribution(tmp_path, 'dvplugin_listed', {'listed': 'dvplugin_listed'},
                       BACKBONE.format(name='ListedPluginBackbone'))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert 'ListedPluginBackbone' not in MODELS
    from densevit.cli import main as cli
    assert cli(['list-models', 'ListedPlugin']) == 0
    assert 'ListedPluginBackbone' in capsys.readouterr().out


def test_custom_imports_plugin_backbone_builds_through_a_config(tmp_path, monkeypatch):
    """No entry point: the config names the module in mmengine's ``custom_imports``."""
    (tmp_path / 'dvplugin_custom.py').write_text(BACKBONE.format(name='CustomImportBackbone'))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = plugin_config(tmp_path, 'CustomImportBackbone', extra=(
        "custom_imports = dict(imports=['dvplugin_custom'], allow_failed_imports=False)"))
    model = MODELS.build(load_config(config).model)
    assert model.backbone.out_features['s8'].channels == 16


def test_a_plugin_that_fails_to_import_is_named(tmp_path, monkeypatch, capsys):
    write_distribution(tmp_path, 'dvplugin_broken', {'broken': 'dvplugin_broken.models'},
                       '')
    (tmp_path / 'dvplugin_broken' / 'models.py').write_text('import a_module_nobody_has\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    from densevit.plugins import PluginError, load_plugins
    with pytest.raises(PluginError) as error:
        load_plugins()
    message = str(error.value)
    for part in ("'broken'", "'dvplugin_broken.models'", 'dvplugin_broken 0.1',
                 'a_module_nobody_has'):
        assert part in message
    # every command reads its config through load_config: one line naming the plugin
    assert cli(['info', QUICKSTART, '--no-flops']) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "densevit plugin 'broken'" in err, err
    monkeypatch.undo()  # off sys.path again: the next search no longer sees it
    assert 'broken' not in load_plugins()
