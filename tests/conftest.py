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
