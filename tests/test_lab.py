"""JupyterLab as a reader meets it: headless Chromium opens the tour and a paper notebook in a running Lab, and
the rendered page shows the notebook with every committed figure and no error dialog. Needs Chromium from the
system's packages (`apt-get install chromium`; `.ci/run` installs it); without it the test is skipped, with
that reason."""
import json
import os
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
    "`./dev lab` over a copy of the repository's notebooks (so nothing it might save touches the checkout)."
    tmp = tmp_path_factory.mktemp('lab')
    for f in ('settings.ini', 'setup.py', 'dev'): shutil.copy2(ROOT / f, tmp / f)
    shutil.copytree(ROOT / 'nbs', tmp / 'nbs')
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    token = secrets.token_hex(8)
    env = dict(os.environ, LTVIT_VENV=str(Path(sys.executable).parent.parent),
               JUPYTER_RUNTIME_DIR=str(tmp / 'runtime'), HOME=str(tmp / 'home'))
    proc = subprocess.Popen(['./dev', 'lab', '--no-browser', f'--port={port}', '--ip=127.0.0.1',
                             f'--IdentityProvider.token={token}'], cwd=tmp, env=env,
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
                        f'{url}/lab/tree/nbs/{page}?token={token}'], capture_output=True, text=True, timeout=180)
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


def _tab_states(url: str, seconds: float, tmp_path) -> list[tuple[float, str, bool]]:
    "Drive headless Chromium over the DevTools protocol: (time, document tab, modified?) each second for `seconds`."
    import websocket  # websocket-client, a dependency of jupyter_server
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    browser = subprocess.Popen([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', f'--remote-debugging-port={port}',
                                f'--user-data-dir={tmp_path / "cdp"}', '--window-size=1400,1000', 'about:blank'],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try: pages = json.load(urllib.request.urlopen(f'http://127.0.0.1:{port}/json', timeout=2)); break
            except OSError: time.sleep(0.2)
        ws = websocket.create_connection(pages[0]['webSocketDebuggerUrl'], suppress_origin=True, timeout=30)
        calls = iter(range(1, 10**6))
        def call(method, **params):
            i = next(calls); ws.send(json.dumps({'id': i, 'method': method, 'params': params}))
            while (m := json.loads(ws.recv())).get('id') != i: pass
            return m.get('result', {})
        call('Page.navigate', url=url)
        probe = """JSON.stringify([...document.querySelectorAll('li.lm-TabBar-tab')].filter(e => e.title.startsWith('Name:'))
                   .map(e => [e.title.split('\\n')[0], e.classList.contains('jp-mod-dirty')]))"""
        states, t0 = [], time.time()
        while time.time() - t0 < seconds:
            time.sleep(1)
            got = json.loads(call('Runtime.evaluate', expression=probe, returnByValue=True)['result']['value'])
            states += [(round(time.time() - t0), name, dirty) for name, dirty in got]
        return states
    finally:
        browser.kill(); browser.wait()


@pytest.mark.parametrize('page', PAGES)
def test_opening_a_notebook_leaves_it_unmodified(lab, page, tmp_path):
    "Lab marks a notebook modified when its kernel reports metadata the file lacks; `./dev lab` serves it with them."
    url, token = lab
    states = _tab_states(f'{url}/lab/workspaces/t{secrets.token_hex(4)}/tree/nbs/{page}?token={token}&reset', 25, tmp_path)
    mine = [s for s in states if s[1] == f'Name: {Path(page).name}']
    assert mine, f'{page} never opened: {states[-3:]}'
    assert not any(s[2] for s in mine), f'{page} was marked modified: {mine}'
    sessions = json.load(urllib.request.urlopen(f'{url}/api/sessions?token={token}', timeout=10))
    kernel = [x['kernel'] for x in sessions if x['path'] == f'nbs/{page}']
    assert kernel and kernel[0]['execution_state'] == 'idle', sessions  # the kernel started while the tab was watched
