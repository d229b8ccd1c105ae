"""Config mistakes are errors that name the mistake and the nearest right thing, never ignored:
unknown types, misspelled keywords, missing ``_base_`` files, ``--cfg-options`` keys that match
nothing."""
import argparse
import inspect
import os.path as osp
import textwrap

import pytest
from mmengine.config import DictAction
from mmengine.registry import TRANSFORMS as ROOT_TRANSFORMS
from mmengine.registry import DefaultScope

from densevit.apis.config import load_config
from densevit.registry import DATASETS, MODELS, TRANSFORMS, Registry

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs/quickstart/segmenter-linear_vit-tiny_ade20k.py')


def test_unknown_type_lists_the_nearest_registered_names():
    with pytest.raises(KeyError, match=r"'UperHead' is not a registered model type "
                                       r"\(closest: UPerHead"):
        MODELS.build(dict(type='UperHead'))


@pytest.mark.parametrize('registry, cfg, owner, closest', [
    (TRANSFORMS, dict(type='LoadAnnotations', with_sge=True), 'LoadAnnotations', 'with_seg'),
    (DATASETS, dict(type='CocoDataset', ann_fle='a.json'), 'CocoDataset', 'ann_file'),
    (MODELS, dict(type='UPerHead', chanels=64), 'UPerHead', 'channels'),
    (MODELS, dict(type='ViT', arch='tiny', drop_path=0.1), 'ViT', 'drop_path_rate'),
])
def test_misspelled_keyword_names_the_module_and_the_closest_keyword(registry, cfg, owner,
                                                                      closest):
    with pytest.raises(TypeError, match=rf"{owner} got unknown keyword '\w+' \(closest "
                                        rf"accepted: {closest}"):
        registry.build(cfg)


def test_misspelled_keyword_through_the_runner_registries():
    """The Runner builds through mmengine's root registries with default_scope='densevit'."""
    with DefaultScope.overwrite_default_scope('densevit'):
        with pytest.raises(TypeError, match=r"Resize got unknown keyword 'keep_rato' "
                                            r"\(closest accepted: keep_ratio"):
            ROOT_TRANSFORMS.build(dict(type='Resize', scale=8, keep_rato=True))


def test_keyword_check_keeps_classes_and_signatures():
    registry = Registry('test thing')

    @registry.register_module()
    class Thing:
        def __init__(self, size: int, *, name: str = 'x') -> None:
            self.size, self.name = size, name

    class Child(Thing):
        pass

    assert registry.get('Thing') is Thing
    assert list(inspect.signature(Thing).parameters) == ['size', 'name']
    assert Thing(3, name='y').name == 'y' and registry.build(dict(type='Thing', size=2)).size == 2
    with pytest.raises(TypeError, match=r"Child got unknown keyword 'nmae' \(closest accepted: "
                                        r"name\); it accepts size, name"):
        Child(1, nmae='z')


def _write(folder, name: str, text: str) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_missing_base_file_is_named_with_the_config_naming_it(tmp_path):
    _write(tmp_path, 'base/runtime.py', "_base_ = ['./shedule.py']\nlr = 0.1\n")
    top = _write(tmp_path, 'top.py', "_base_ = ['./base/runtime.py']\nmodel = dict(a=1)\n")
    with pytest.raises(FileNotFoundError, match=r'config .*base/runtime.py names _base_ file '
                                                r'.*base/shedule.py, which does not exist'):
        load_config(top)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'config file .*nope.py does not exist'):
        load_config(str(tmp_path / 'nope.py'))


@pytest.fixture(scope='module')
def cfg():
    return load_config(CONFIG)


@pytest.mark.parametrize('key, words', [
    ('train_cfg.max_epoch', r"train_cfg has no 'max_epoch' \(closest: max_epochs[,)]"),
    ('model.backbnoe.depth', r"model has no 'backbnoe' \(closest: backbone[,)].*"),
    ('wrok_dir', r"the top level has no 'wrok_dir' \(closest: work_dir\)"),
    ('model.backbone.depht', r"model.backbone has no 'depht' \(closest: depth[,)].*"),
    ('param_scheduler.9.end', r"param_scheduler has no '9' \(a list of \d+ items\)"),
    ('model.test_cfg.mode.x', r"model.test_cfg.mode has no 'x' \(a value 'whole', not a dict\)"),
])
def test_cfg_option_that_matches_nothing_is_an_error(cfg, key, words):
    with pytest.raises(KeyError, match=rf"--cfg-options key '{key}' matches nothing in config "
                                       rf".*: {words}\. To add it as a new key, write "
                                       rf"\+{key}=\.\.\."):
        load_config(cfg, {key: 1})


def test_cfg_options_that_match_are_merged(cfg):
    merged = load_config(cfg, {
        'train_cfg.max_epochs': 3,  # exists
        'param_scheduler.0.end': 7,  # a list item by index
        'model.backbone.qkv_bias': False,  # not in the config, a keyword ViT accepts
        'train_dataloader.pin_memory': True,  # a keyword of the DataLoader the Runner builds
        'load_from': 'x.pth',  # a Runner argument
        '+model.note': 'mine',  # marked new
        '+extra.deep.key': 5,  # marked new, several levels
    })
    assert merged.train_cfg.max_epochs == 3 and merged.param_scheduler[0].end == 7
    assert merged.model.backbone.qkv_bias is False and merged.train_dataloader.pin_memory is True
    assert merged.load_from == 'x.pth' and merged.model.note == 'mine'
    assert merged.extra.deep.key == 5 and '+model' not in merged


def test_new_key_marker_survives_the_command_line_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    args = parser.parse_args(['--cfg-options', '+model.note=3', 'train_cfg.max_epochs=2'])
    assert args.cfg_options == {'+model.note': 3, 'train_cfg.max_epochs': 2}
