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
