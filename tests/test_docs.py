"""The docs (docs/*.md and README.md) say only what is true of this densevit.

Every ``densevit SUB`` / ``tools/X.py`` command in their code blocks and inline code names a
real subcommand or script, and every ``--flag`` after it is one that subcommand's ``--help``
lists; every config path exists (or is one the page tells you to write, and then it builds);
every relative link resolves; the TensorBoard switch of docs/training_curves.md writes event
files that TensorBoard itself reads back.
"""
import contextlib
import glob
import io
import itertools
import json
import os.path as osp
import re

import numpy as np
import pytest
from PIL import Image

from densevit.cli import SUBCOMMANDS
from densevit.cli import main as cli
from tests.conftest import ROOT

PAGES = sorted(glob.glob(osp.join(ROOT, 'docs', '*.md'))) + [osp.join(ROOT, 'README.md')]
TOOL_SUBCOMMANDS = {'train.py': 'train', 'test.py': 'test', 'dist_train.sh': 'train',
                    'dist_test.sh': 'test', 'convert_checkpoint.py': 'convert',
                    'make_synthetic.py': 'make-synthetic', 'benchmark.py': 'benchmark',
                    'make_zoo.py': 'zoo'}
COMMAND = re.compile(r'\bdensevit ([a-z][a-z-]*)|\btools/(\w+\.(?:py|sh))\b')
FLAG = re.compile(r'(?<![\w-])--[a-z][a-z0-9-]*')
CONFIG_PATH = re.compile(r'(?<![\w-])configs/[A-Za-z0-9_./*{},-]+')
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.M | re.S)
WRITTEN = re.compile(r'\A# (configs/\S+?\.py)\b')


def read(page: str) -> str:
    with open(page, encoding='utf-8') as f:
        return f.read()


def code(text: str) -> list[tuple[str, str]]:
    """(language, text) of every fenced block and, as ('inline', text), every inline code span
    outside them."""
    blocks = [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]
    prose = FENCE.sub('', text)
    return blocks + [('inline', span.replace('\n', ' '))
                     for span in re.findall(r'`([^`]+)`', prose)]


def commands(text: str) -> list[tuple[str, str]]:
    """(command, its arguments) for each densevit subcommand or tools/ script: continuation
    lines joined, arguments up to the next command, a comment, ``&&`` or ``;``."""
    found = []
    for _, body in code(text):
        for line in body.replace('\\\n', ' ').splitlines():
            for part in re.split(r'&&|;', re.split(r'(?:^|\s)#', line)[0]):
                matches = list(COMMAND.finditer(part))
                for match, after in itertools.zip_longest(matches, matches[1:]):
                    end = after.start() if after else len(part)
                    found.append((match.group(0), part[match.end():end]))
    return found


def written_configs(text: str) -> dict[str, str]:
    """{path: file text} of the python blocks that start with ``# configs/....py``: configs
    the page tells you to write."""
    return {WRITTEN.match(body).group(1): body for lang, body in code(text)
            if lang == 'python' and WRITTEN.match(body)}


_HELP: dict[str, str] = {}


def help_text(subcommand: str) -> str:
    if subcommand not in _HELP:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli([subcommand, '--help']) == 0
        _HELP[subcommand] = out.getvalue()
    return _HELP[subcommand]


@pytest.mark.parametrize('page', PAGES, ids=osp.basename)
def test_commands_and_flags_exist(page):
    bad = []
    for command, arguments in commands(read(page)):
        if command.startswith('densevit'):
            subcommand = command.split()[1]
            if subcommand not in SUBCOMMANDS:
                bad.append(f'{command}: no such subcommand')
                continue
        else:
            script = command.split('/')[1]
            if not osp.isfile(osp.join(ROOT, 'tools', script)):
                bad.append(f'{command}: no such script')
                continue
            subcommand = TOOL_SUBCOMMANDS.get(script)
            if subcommand is None:
                continue
        known = set(FLAG.findall(help_text(subcommand)))
        bad += [f'{command}{arguments}: {flag} is not an option of densevit {subcommand}'
                for flag in FLAG.findall(arguments) if flag not in known]
    assert bad == []


def test_the_pages_name_commands_at_all():
    """The parsing above finds what it should (a check of the check)."""
    found = commands(read(osp.join(ROOT, 'docs', 'distributed.md')))
    assert ('tools/dist_train.sh', ' configs/dino/dino-4scale_swin-t_coco-12e.py 8 --work-dir '
            "work_dirs/dino-swin-t --resume'") in found
    assert len(commands(read(osp.join(ROOT, 'README.md')))) >= 15
    assert len(FLAG.findall(' '.join(a for _, a in commands(read(
        osp.join(ROOT, 'README.md')))))) >= 15


def _expand(path: str) -> list[str]:
    """``a{b,c}d`` -> [abd, acd] (one brace group, as the docs write them)."""
    match = re.search(r'\{([^}]*)\}', path)
    if not match:
        return [path]
    return [path[:match.start()] + choice + path[match.end():]
            for choice in match.group(1).split(',')]


@pytest.mark.parametrize('page', PAGES, ids=osp.basename)
def test_config_paths_and_links_resolve(page):
    text = read(page)
    written = written_configs(text)
    missing = []
    for path in {p.rstrip('.,') for p in CONFIG_PATH.findall(text)}:
        if not (path.endswith(('.py', '/', '*')) or '*' in path) or path in written:
            continue  # another project's path (configs/coco/....yaml), or one the page writes
        for each in _expand(path):
            full = osp.join(ROOT, each)
            if not (glob.glob(full) if '*' in each else osp.exists(full)):
                missing.append(each)
    for target in LINK.findall(text):
        if re.match(r'[a-z]+:', target) or target.startswith('#'):
            continue
        if not osp.exists(osp.join(osp.dirname(page), target.split('#')[0])):
            missing.append(f'link {target}')
    assert missing == []


def _write_config(tmp_path, path: str, body: str) -> str:
    """The page's config at its place under tmp_path, its ``_base_`` made absolute (to the
    repository's configs it names)."""
    def absolute(match):
        return repr(osp.normpath(osp.join(ROOT, osp.dirname(path), match.group(1))))
    body = re.sub(r"'(\.\.?/[^']+\.py)'", absolute, body)
    target = tmp_path / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(body)
    return str(target)


@pytest.mark.slow
def test_the_configs_the_pages_write_build(tmp_path, monkeypatch):
    """Every config a page tells you to write (backbone swaps under UperNet, Segmenter, DINO
    and SAM; your own dataset; a plugin backbone through custom_imports) builds its model."""
    from densevit.apis import load_config
    from densevit.registry import MODELS
    plugin_page = read(osp.join(ROOT, 'docs', 'plugins.md'))
    plugin = next(body for lang, body in code(plugin_page) if 'class ConvPyramid' in body)
    (tmp_path / 'my_densevit_parts').mkdir()
    (tmp_path / 'my_densevit_parts' / '__init__.py').write_text('')
    (tmp_path / 'my_densevit_parts' / 'backbones.py').write_text(plugin)
    monkeypatch.syspath_prepend(str(tmp_path))
    built = {}
    for page in PAGES:
        for path, body in written_configs(read(page)).items():
            cfg = load_config(_write_config(tmp_path, path, body))
            model = MODELS.build(cfg.model)
            built[path] = (type(model).__name__, type(model.backbone).__name__)
    backbones = {backbone for _, backbone in built.values()}
    assert {'ViT', 'Swin', 'DiNAT', 'TimmBackbone', 'ConvPyramid'} <= backbones
    assert {'Segmentor', 'Detector', 'PromptableSegmenter'} <= {m for m, _ in built.values()}
    assert len(built) >= 12


def _coco_layout(root, classes: dict[int, str]) -> None:
    """Two 64x64 images per split with one box of each category, COCO format."""
    for split in ('train', 'val'):
        (root / split).mkdir(parents=True)
        images, annotations = [], []
        for i in range(2):
            Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(root / split / f'{i}.jpg')
            images.append(dict(id=i + 1, file_name=f'{i}.jpg', height=64, width=64))
            for j, cat_id in enumerate(classes):
                x = 4 + 20 * j
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=cat_id, iscrowd=0,
                    bbox=[x, 8, 16, 16], area=256,
                    segmentation=[[x, 8, x + 16, 8, x + 16, 24, x, 24]]))
        (root / 'annotations').mkdir(exist_ok=True)
        (root / 'annotations' / f'{split}.json').write_text(json.dumps(dict(
            images=images, annotations=annotations,
            categories=[dict(id=k, name=v) for k, v in classes.items()])))


@pytest.mark.slow
def test_your_own_dataset_configs_read_your_data(tmp_path):
    """docs/custom_dataset.md's configs over data in the layouts it draws: the classes are
    yours (a category the config leaves out is dropped), labels follow metainfo's order."""
    from densevit.apis import load_config
    from densevit.registry import DATASETS
    page = written_configs(read(osp.join(ROOT, 'docs', 'custom_dataset.md')))
    _coco_layout(tmp_path / 'shapes', {7: 'dog', 3: 'cat', 9: 'bird'})
    cfg = load_config(_write_config(tmp_path, 'configs/shapes/dino_vit-tiny_shapes.py',
                                    page['configs/shapes/dino_vit-tiny_shapes.py']),
                      {'data_root': str(tmp_path / 'shapes') + '/'})
    assert cfg.val_evaluator.ann_file == str(tmp_path / 'shapes' / 'annotations' / 'val.json')
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    assert dataset.metainfo['cat_ids'] == (3, 7)  # 'cat', 'dog' in the config's order
    labels = [[inst['bbox_label'] for inst in dataset.get_data_info(i)['instances']]
              for i in range(len(dataset))]
    assert labels == [[1, 0], [1, 0]]  # 'dog' (box at x=4) then 'cat'; 'bird' dropped

    roads = tmp_path / 'roads'
    for split in ('training', 'validation'):
        (roads / 'images' / split).mkdir(parents=True)
        (roads / 'annotations' / split).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(roads / 'images' / split / 'a.jpg')
        Image.fromarray(np.arange(4, dtype=np.uint8).repeat(256).reshape(32, 32)).save(
            roads / 'annotations' / split / 'a.png')
    cfg = load_config(_write_config(tmp_path, 'configs/roads/upernet_resnet18_roads.py',
                                    page['configs/roads/upernet_resnet18_roads.py']),
                      {'data_root': str(roads) + '/'})
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    assert dataset.metainfo['classes'] == ('road', 'car', 'tree')
    seg = dataset[0]['data_samples'].gt_sem_seg.data
    # file ids 0..3 -> ignore, road, car, tree
    assert sorted(seg.unique().tolist()) == [0, 1, 2, 255]


@pytest.mark.slow
def test_tensorboard_is_one_config_entry(tmp_path):
    """The page's config builds a real Runner whose visualizer writes both the local scalars
    (what densevit plot reads) and TensorBoard event files, read back by TensorBoard's own
    reader; a Runner built before it in the same process (as in a notebook, or an earlier test)
    does not lend it its visualizer."""
    pytest.importorskip('tensorboard', reason='pip install tensorboard (docs/training_curves.md)')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from densevit.apis import load_config
    from densevit.engine.launch import build_runner
    path = 'configs/quickstart/upernet_resnet18_ade20k_tensorboard.py'
    page = written_configs(read(osp.join(ROOT, 'docs', 'training_curves.md')))
    earlier = load_config(osp.join(ROOT, 'configs/quickstart/upernet_resnet18_ade20k.py'))
    earlier.work_dir = str(tmp_path / 'earlier')
    build_runner(earlier)
    cfg = load_config(_write_config(tmp_path, path, page[path]))
    cfg.work_dir = str(tmp_path / 'work')
    runner = build_runner(cfg)
    runner.visualizer.add_scalars({'loss': 0.5, 'lr': 0.001}, step=3)
    runner.visualizer.close()
    events = glob.glob(str(tmp_path / 'work' / '*' / 'vis_data' / 'events.out.tfevents.*'))
    assert len(events) == 1
    reader = EventAccumulator(osp.dirname(events[0]))
    reader.Reload()
    assert [(s.step, s.value) for s in reader.Scalars('loss')] == [(3, 0.5)]
    scalars = glob.glob(str(tmp_path / 'work' / '*' / 'vis_data' / 'scalars.json'))
    with open(scalars[0]) as f:
        assert json.loads(f.readline()) == {'loss': 0.5, 'lr': 0.001, 'step': 3}
