import base64
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'data'
NIH_SAMPLE = SHARED / 'nih-sample'


@pytest.fixture(scope='session')
def nih_sample() -> Path:
    "The real 500-image NIH ChestX-ray14 sample; skipped (with the reason) where it is absent."
    if not (NIH_SAMPLE / 'Data_Entry_2017.csv').is_file():
        pytest.skip(f'the real NIH sample is not at {NIH_SAMPLE}')
    return NIH_SAMPLE


def _notebook_outputs(nb: Path) -> tuple[list[str], list[bytes]]:
    "The Markdown texts and PNG images an executed notebook shows; an error output fails."
    md, png = [], []
    for c in json.loads(Path(nb).read_text())['cells']:
        for o in c.get('outputs', []):
            if o.get('output_type') == 'error': raise AssertionError(f'{Path(nb).name} holds an error output')
            d = o.get('data', {})
            if 'text/markdown' in d: md.append(''.join(d['text/markdown']))
            if 'image/png' in d: png.append(base64.b64decode(''.join(d['image/png'])))
    return md, png


@pytest.fixture(scope='session')
def notebook_outputs():
    "A function: the Markdown texts and PNG images an executed notebook shows."
    return _notebook_outputs


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: trains models or runs a grid (minutes); `./dev test -m "not slow"` '
                                       'is the fast tier for the edit loop, CI runs everything')


@pytest.fixture(scope='session')
def slurm_cluster(tmp_path_factory):
    "A one-node Slurm of this machine (Debian's slurmctld, slurmd, munge), started here; skipped with the reason."
    import shutil
    from ltvit.slurm import local_cluster, stop_cluster
    if not shutil.which('sbatch') or not shutil.which('slurmctld', path='/usr/sbin:' + os.environ.get('PATH', '')):
        pytest.skip('Slurm is not installed (apt-get install slurmctld slurmd munge slurm-client; .ci/run installs them)')
    if os.geteuid() != 0: pytest.skip('slurmd must run as root to start jobs; run the tests as root (CI does)')
    env = local_cluster(tmp_path_factory.mktemp('slurm'), port=16837)
    old = os.environ.get('SLURM_CONF')
    os.environ['SLURM_CONF'] = env['SLURM_CONF']
    yield env
    stop_cluster(env)
    if old is None: os.environ.pop('SLURM_CONF', None)
    else: os.environ['SLURM_CONF'] = old
