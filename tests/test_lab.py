"""JupyterLab as a reader meets it: headless Chromium opens the tour and a paper notebook in a running Lab, and
the rendered page shows the notebook with every committed figure and no error dialog. Needs Chromium from the
system's packages (`apt-get install chromium`; `.ci/run` installs it); without it the test is skipped, with
that reason."""
import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((shutil.which(n) for n in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(n)), None)
PAGES = ['guides/tour.ipynb', 'paper/attention_maps.ipynb']

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason='Chromium is not installed (apt-get install chromium)')]


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "A JupyterLab server over a copy of nbs/ (so nothing it might save touches the checkout)."
    tmp = tmp_path_factory.mktemp('lab')
    shutil.copy(ROOT / 'settings.ini', tmp / 'settings.ini')
    shutil.copytree(ROOT / 'nbs', tmp / 'nbs')
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    token = secrets.token_hex(8)
    proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--allow-root', f'--port={port}',
                             '--ip=127.0.0.1', f'--ServerApp.token={token}', f'--notebook-dir={tmp / "nbs"}'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f'http://127.0.0.1:{port}'
    for _ in range(120):
        try: urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2); break
        except OSError: time.sleep(0.5)
    else:
        proc.kill(); pytest.fail('JupyterLab did not start within 60 s')
    yield url, token
    proc.terminate(); proc.wait(timeout=30)


@pytest.mark.parametrize('page', PAGES)
def test_notebook_opens_in_jupyterlab_with_its_figures(lab, page, tmp_path):
    url, token = lab
    r = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--virtual-time-budget=30000',
                        f'--user-data-dir={tmp_path / "profile"}', '--window-size=1400,1000', '--dump-dom',
                        f'{url}/lab/tree/{page}?token={token}'], capture_output=True, text=True, timeout=180)
    dom = r.stdout
    title = re.search(r'<title>([^<]*)</title>', dom)
    assert title and title[1].startswith(Path(page).name[:12]) and title[1].endswith('JupyterLab'), \
        f'{page} did not open in JupyterLab (title {title[1] if title else None!r})'
    nb = json.loads((ROOT / 'nbs' / page).read_text())
    figures = sum('image/png' in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', []))
    shown = len(re.findall(r'<img[^>]+src="data:image/png;base64', dom))
    assert figures >= 1 and shown >= figures, f'{page}: {figures} committed figures, {shown} shown in JupyterLab'
    assert not re.findall(r'class="[^"]*\bjp-Dialog\b', dom), f'{page}: JupyterLab showed a dialog (an error?)'
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in dom, f'{page} shows an error output'
