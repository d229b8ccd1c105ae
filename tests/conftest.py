"""Shared fixtures: small synthetic stand-in sets on disk, written once per test session."""
import os
import os.path as osp

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Under pytest-xdist each worker gets its share of the cores: two workers with two threads each
# on a 2-core machine make every parallel kernel wait for a thread that another worker holds.
if os.environ.get('PYTEST_XDIST_WORKER_COUNT'):
    torch.set_num_threads(max(1, (os.cpu_count() or 1)
                              // int(os.environ['PYTEST_XDIST_WORKER_COUNT'])))


@pytest.fixture(scope='session')
def ade20k_root(tmp_path_factory) -> str:
    """A tiny ADE20K-layout set (12 train, 4 val, 64 px); returns the ADEChallengeData2016 path."""
    from densevit.datasets.synthetic import make_ade20k
    return make_ade20k(str(tmp_path_factory.mktemp('ade20k')), seed=0, num_train=12, num_val=4,
                       size=64) + '/'


@pytest.fixture(scope='session')
def coco_root(tmp_path_factory) -> str:
    """A tiny COCO-2017-layout set (12 train, 4 val, 64 px); returns the data root."""
    from densevit.datasets.synthetic import make_coco
    return make_coco(str(tmp_path_factory.mktemp('coco')), seed=0, num_train=12, num_val=4,
                     size=64) + '/'


@pytest.fixture
def repo_root() -> str:
    return ROOT


def tool_env() -> dict:
    """Environment for running tools/ in a subprocess: the package on the path, one thread."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    return env
