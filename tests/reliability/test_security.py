"""Hostile files let nothing in: checkpoints that name code or hold tensor subclasses are refused
before anything runs, .pkl files hold only numpy arrays, no densevit source executes strings or
downloaded code, and no file densevit writes leaves its folder because of a dataset's file name."""
import ast
import glob
import os
import os.path as osp
import pickle
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.runner.checkpoint import _load_checkpoint
from PIL import Image

from densevit.checkpoint.reading import check_plain_tensors, read_state_dict
from densevit.engine.checkpoint import enable_safe_resume
from densevit.engine.hooks import ShowResultHook, safe_file_stem
from densevit.engine.runner import ResilientRunner
from densevit.structures import DataSample, PixelData

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


class _RunsCode:
    """Unpickling this runs ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Tagged(torch.Tensor):
    """A tensor subclass: its methods would run on every operation of the model."""


def _payload(tmp_path) -> tuple[str, str]:
    """A checkpoint whose loading would create ``marker``."""
    marker = str(tmp_path / 'pwned')
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': _RunsCode(f'touch {marker}')}, path)
    return path, marker


def _subclass_checkpoint(tmp_path) -> str:
    path = str(tmp_path / 'subclass.pth')
    torch.save({'state_dict': {'w': torch.ones(2).as_subclass(_Tagged)}}, path)
    return path


def test_reader_refuses_a_global_outside_the_allowlist(tmp_path):
    path, marker = _payload(tmp_path)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing checkpoint .*evil.pth: it "
                                                     r"references \['posix.system'\]"):
        read_state_dict(path)
    assert not osp.exists(marker)


def test_reader_refuses_it_even_when_the_process_allows_it(tmp_path):
    """Another library may add globals to torch's weights-only allowlist for the whole process;
    densevit's reader keeps its own list."""
    path, marker = _payload(tmp_path)
    with torch.serialization.safe_globals([os.system]):
        with pytest.raises(pickle.UnpicklingError, match='posix.system'):
            read_state_dict(path)
    assert not osp.exists(marker)


def test_reader_refuses_a_tensor_subclass(tmp_path):
    path = _subclass_checkpoint(tmp_path)
    with pytest.raises(pickle.UnpicklingError, match=r'subclass.pth: it references .*_Tagged'):
        read_state_dict(path)
    with torch.serialization.safe_globals([_Tagged]):
        with pytest.raises(pickle.UnpicklingError, match=r'_Tagged'):
            read_state_dict(path)


def test_tensor_subclass_check_names_the_key():
    state = {'model': {'a': torch.zeros(1), 'b': [torch.nn.Parameter(torch.zeros(1)),
                                                  torch.zeros(1).as_subclass(_Tagged)]}}
    with pytest.raises(TypeError, match=r'refusing checkpoint x.pth: model.b\[1\] is a '
                                        r'.*_Tagged, a tensor subclass'):
        check_plain_tensors(state, 'x.pth')
    check_plain_tensors({'a': torch.zeros(1), 'p': torch.nn.Parameter(torch.ones(1))}, 'y.pth')


def test_reader_still_reads_a_training_checkpoint(tmp_path):
    """The allowlist holds what densevit's own checkpoints need (message hub, numpy values)."""
    from mmengine.logging.history_buffer import HistoryBuffer
    enable_safe_resume()
    buffer = HistoryBuffer()
    buffer.update(0.5)
    path = str(tmp_path / 'epoch_1.pth')
    torch.save({'state_dict': OrderedDict(w=torch.arange(3.0)),
                'meta': {'epoch': 1, 'seed': np.int64(3), 'hist': np.zeros(2)},
                'message_hub': {'log_scalars': {'loss': buffer}, 'lr': np.float64(0.1)}}, path)
    state = read_state_dict(path)
    assert list(state) == ['w'] and torch.equal(state['w'], torch.arange(3.0))


def test_resume_loading_refuses_code_and_tensor_subclasses(tmp_path):
    """Resume goes through mmengine's ``_load_checkpoint`` (torch.load, weights_only by default
    since torch 2.6) with RESUME_GLOBALS allowed."""
    enable_safe_resume()
    path, marker = _payload(tmp_path)
    with pytest.raises(pickle.UnpicklingError, match='posix.system'):
        _load_checkpoint(path, map_location='cpu')
    with pytest.raises(pickle.UnpicklingError, match='_Tagged'):
        _load_checkpoint(_subclass_checkpoint(tmp_path), map_location='cpu')
    assert not osp.exists(marker)


def test_resume_refuses_code_even_when_the_process_allows_it(tmp_path):
    """The Runner checks the file against densevit's own allowlist before mmengine loads it, and
    --resume's search treats such a file as unreadable."""
    from densevit.engine.runner import unreadable_reason
    enable_safe_resume()
    path, marker = _payload(tmp_path)
    with torch.serialization.safe_globals([os.system]):
        assert 'posix.system' in unreadable_reason(path)
        runner = object.__new__(ResilientRunner)
        runner._has_loaded, runner._resume, runner._load_from = False, True, path
        with pytest.raises(pickle.UnpicklingError, match='posix.system'):
            runner.load_or_resume()
    assert not osp.exists(marker)


def test_init_model_refuses_code_and_tensor_subclasses(tmp_path):
    from densevit.apis import init_model
    config = osp.join(ROOT, 'configs/quickstart/upernet_resnet18_ade20k.py')
    path, marker = _payload(tmp_path)
    with torch.serialization.safe_globals([os.system]):
        with pytest.raises(pickle.UnpicklingError, match='posix.system'):
            init_model(config, path)
    with pytest.raises(pickle.UnpicklingError, match='_Tagged'):
        init_model(config, _subclass_checkpoint(tmp_path))
    assert not osp.exists(marker)


def test_pkl_reader_takes_only_numpy_arrays_and_containers(tmp_path):
    good = tmp_path / 'model_final.pkl'
    with open(good, 'wb') as f:
        pickle.dump({'model': OrderedDict(w=np.ones((2, 2), np.float32)), 'step': 7}, f)
    np.testing.assert_array_equal(read_state_dict(str(good))['w'].numpy(), np.ones((2, 2)))
    marker = str(tmp_path / 'pwned')
    for name, obj in (('code', _RunsCode(f'touch {marker}')),
                      ('class', {'w': types.SimpleNamespace(a=1)}),
                      ('torch', {'w': torch.ones(1)})):
        path = tmp_path / f'{name}.pkl'
        with open(path, 'wb') as f:
            pickle.dump(obj, f)
        with pytest.raises(pickle.UnpicklingError, match=rf'refusing to load .* from checkpoint '
                                                         rf'.*{name}.pkl \(only numpy arrays'):
            read_state_dict(str(path))
    assert not osp.exists(marker)


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return f'{_dotted(func.value)}.{func.attr}'
    return ''


def test_no_source_executes_strings_or_downloaded_code():
    """Configs are code by design (mmengine executes them: docs say to use trusted configs);
    nothing else in densevit or tools evaluates text, unpickles freely or trusts remote code."""
    files = glob.glob(osp.join(ROOT, 'densevit', '**', '*.py'), recursive=True) + \
        glob.glob(osp.join(ROOT, 'tools', '**', '*.py'), recursive=True)
    assert len(files) > 50
    banned = {'eval', 'exec', 'compile', '__import__', 'importlib.import_module',
              'pickle.load', 'pickle.loads', 'marshal.loads', 'yaml.load', 'yaml.unsafe_load',
              'dill.load', 'dill.loads', 'os.system', 'subprocess.call', 'subprocess.Popen',
              'subprocess.run', 'subprocess.check_output'}
    found = []
    for path in files:
        with open(path, encoding='utf-8') as f:
            text = f.read()
        rel = osp.relpath(path, ROOT)
        if 'trust_remote_code' in text:
            found.append(f'{rel}: trust_remote_code')
        for call in _calls(ast.parse(text, filename=path)):
            name = _dotted(call.func)
            if name in banned:
                found.append(f'{rel}:{call.lineno}: {name}(')
            if name.endswith('torch.load'):
                weights_only = [k for k in call.keywords if k.arg == 'weights_only']
                if not (weights_only and isinstance(weights_only[0].value, ast.Constant)
                        and weights_only[0].value.value is True):
                    found.append(f'{rel}:{call.lineno}: torch.load without weights_only=True')
            if name.endswith(('np.load', 'numpy.load')) and any(
                    k.arg == 'allow_pickle' for k in call.keywords):
                found.append(f'{rel}:{call.lineno}: numpy.load with allow_pickle')
    # Reviewed exceptions: tools/benchmarks run densevit's own scripts in subprocesses (fixed
    # argument lists); the densevit command imports densevit.cli.<module> for a subcommand name
    # looked up in its fixed SUBCOMMANDS table.
    found = [f for f in found if not (f.startswith('tools/') and 'subprocess.' in f)
             and not (f.startswith('densevit/cli/__init__.py:')
                      and 'importlib.import_module' in f)]
    assert found == []


# ------------------------------------------------------------------ files densevit writes

@pytest.mark.parametrize('name, stem', [
    ('../../etc/passwd.jpg', 'passwd'), ('/abs/dir/x.png', 'x'), ('..', 'image'),
    ('a/b/..', 'image'), ('.hidden.jpg', 'hidden.jpg'), ('we ird:na*me.jpg', 'we_ird_na_me'),
    (r'..\..\win.jpg', 'win'),
])
def test_safe_file_stem(name, stem):
    assert safe_file_stem(name) == stem


def test_show_hook_never_writes_outside_its_folder(tmp_path):
    """Image names with ``../`` or an absolute path: the drawings land in out_dir, under safe,
    distinct names."""
    (tmp_path / 'data' / 'a' / 'b').mkdir(parents=True)
    picture = np.full((8, 10, 3), 200, np.uint8)
    Image.fromarray(picture).save(tmp_path / 'data' / 'escape.jpg')
    Image.fromarray(picture).save(tmp_path / 'data' / 'a' / 'escape.jpg')
    names = [str(tmp_path / 'data' / 'a' / 'b' / '..' / '..' / 'escape.jpg'),  # ../ inside
             str(tmp_path / 'data' / 'a' / 'escape.jpg')]  # absolute, same stem
    out_dir = tmp_path / 'work' / 'vis'
    hook = ShowResultHook(out_dir=str(out_dir))
    runner = types.SimpleNamespace(test_dataloader=types.SimpleNamespace(
        dataset=types.SimpleNamespace(metainfo=dict(palette=[(255, 0, 0)], classes=('x',)))))
    hook.before_test(runner)
    samples = []
    for name in names:
        sample = DataSample(metainfo=dict(img_path=name))
        sample.pred_sem_seg = PixelData(data=torch.zeros(1, 8, 10, dtype=torch.long))
        samples.append(sample)
    hook.after_test_iter(runner, 0, outputs=samples)
    written = sorted(osp.relpath(p, tmp_path) for p in
                     glob.glob(str(tmp_path / '**' / '*.png'), recursive=True))
    assert written == ['work/vis/escape.png', 'work/vis/escape_1.png']
    drawn = np.asarray(Image.open(out_dir / 'escape.png'))
    np.testing.assert_allclose(drawn[0, 0], (227, 100, 100), atol=3)  # 50% red over grey 200
