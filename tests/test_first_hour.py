"""The first hour of a new user, met the way they meet it: commands run as subprocesses in a clean copy of the
repository (every tracked and untracked-but-not-ignored file, committed into a fresh git repository), offline, with
this checkout's environment. Each test checks what the user sees (the message, its length, the exit status, the
time) and that nothing untracked is left in the repository."""
import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
BIN = Path(sys.executable).parent
COMMANDS = ['ltvit_cache', 'ltvit_train', 'ltvit_paper', 'ltvit_predict', 'ltvit_export']


def user_env(tmp: Path, **extra) -> dict:
    "A user's environment: this venv first on PATH, no network to the hub, empty data and runs folders."
    env = {k: v for k, v in os.environ.items() if not k.startswith(('LTVIT_', 'PYTEST', 'HF_HUB_OFFLINE'))}
    env.update(PATH=f'{BIN}:{env.get("PATH", "/usr/bin:/bin")}', LTVIT_VENV=str(VENV), LTVIT_DATA=str(tmp / 'data'),
               HF_ENDPOINT='http://127.0.0.1:9', HF_HOME=str(tmp / 'hf'), PYTHONWARNINGS='default::DeprecationWarning')
    env.update(extra)
    return env


@pytest.fixture(scope='module')
def clone(tmp_path_factory) -> Path:
    "A clean copy of the working tree as a fresh git repository (what `git clone` of it would give)."
    dst = tmp_path_factory.mktemp('clone') / 'ltvit'
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split('\0')
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT / f, dst / f)
    for cmd in (['init', '-q'], ['add', '-A'], ['-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'clone']):
        subprocess.run(['git', *cmd], cwd=dst, check=True)
    os.chmod(dst.parent, 0o755)
    return dst


def untracked(repo: Path) -> str:
    return subprocess.run(['git', 'status', '--porcelain'], cwd=repo, capture_output=True, text=True).stdout


# --- every command answers --help at once ------------------------------------------------------------------------

@pytest.mark.parametrize('cmd', COMMANDS)
def test_help_answers_in_under_a_second_without_importing_torch(cmd, tmp_path):
    best = min(_timed([str(BIN / cmd), '--help'], user_env(tmp_path)) for _ in range(3))
    assert best < 1.0, f'{cmd} --help took {best:.2f} s'
    probe = ('import sys, ltvit_cli; sys.argv = [%r, "--help"]; status = ltvit_cli.run(%r); '
             'print(status, "torch" in sys.modules, "timm" in sys.modules)' % (cmd, cmd))
    out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, env=user_env(tmp_path))
    assert out.stdout.splitlines()[-1] == '0 False False', out.stdout[-500:] + out.stderr[-500:]
    assert out.stdout.startswith(f'usage: {cmd}'), out.stdout[:200]


def _timed(cmd, env) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.startswith('usage:'), r.stdout[:300] + r.stderr[-300:]
    return time.perf_counter() - t


def test_stored_help_is_what_the_parsers_print():
    import ltvit_cli
    stored = json.loads((ROOT / 'ltvit' / ltvit_cli.HELP_FILE).read_text())
    assert stored == ltvit_cli.help_texts(), 'run python -m ltvit_cli --write'
    assert set(stored) == set(COMMANDS)
    assert '--dataset' in stored['ltvit_train'] and '--allow' in stored['ltvit_predict']


def test_every_usage_error_class_is_reported_briefly():
    "ltvit_cli recognises usage errors by class name (it cannot import the library): the list must be complete."
    import ltvit_cli
    names = set()
    for path in (ROOT / 'ltvit').glob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, 'id', None) in ltvit_cli.USAGE_ERRORS
                                                      for b in node.bases):
                names.add(node.name)
    assert names | {'UsageError'} == set(ltvit_cli.USAGE_ERRORS)


# --- a run that cannot start says why in one line -----------------------------------------------------------------

def _one_line(r, prog: str) -> str:
    err = r.stderr.strip().splitlines()
    assert 'Traceback' not in r.stderr and 'Traceback' not in r.stdout, r.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith(prog), r.stderr[-2000:]
    return err[0]


def test_train_command_offline_stops_at_once_with_one_line(clone, tmp_path):
    env = user_env(tmp_path)
    t = time.time()
    r = subprocess.run(['ltvit_train', '--dataset', 'nih'], cwd=clone, capture_output=True, text=True, env=env)
    line = _one_line(r, 'ltvit_train:')
    assert r.returncode == 2 and time.time() - t < 30, (r.returncode, time.time() - t)
    assert 'hub cannot be reached' in line and '-p pretrained none' in line and '--pretrained' in line
    r = subprocess.run(['ltvit_train', '--dataset', 'nih', '--pretrained', 'none'], cwd=clone, capture_output=True,
                       text=True, env=env)
    line = _one_line(r, 'ltvit_train:')
    assert r.returncode == 2
    for words in ('data folder not found', str(tmp_path / 'data' / 'nih'), '-p data_dir', '--data-dir', 'LTVIT_DATA',
                  'Data_Entry_2017.csv', 'train_val_list.txt'):
        assert words in line, (words, line)
    assert untracked(clone) == ''


def test_papermill_offline_stops_in_seconds_with_one_line(clone, tmp_path):
    "The README's papermill command, offline: one short message, no traceback, a failing exit status, nothing untracked."
    env = user_env(tmp_path)
    for params, words in ((['-p', 'dataset', 'nih'], ['hub cannot be reached', '-p pretrained none']),
                          (['-p', 'dataset', 'nih', '-p', 'pretrained', 'none'],
                           ['data folder not found', '-p data_dir', 'LTVIT_DATA', 'Data_Entry_2017.csv'])):
        t = time.time()
        r = subprocess.run(['papermill', 'nbs/05_train.ipynb', 'runs/nih.ipynb', *params], cwd=clone,
                           capture_output=True, text=True, env=env, timeout=300)
        took = time.time() - t
        assert r.returncode != 0
        assert 'Traceback' not in r.stderr + r.stdout, r.stderr[-3000:]
        stopped = [l for l in r.stderr.splitlines() if l.startswith('papermill: the notebook stopped')]
        assert len(stopped) == 1 and all(w in stopped[0] for w in words), r.stderr[-3000:]
        assert took < 90, f'papermill took {took:.0f} s to stop'  # kernel start and imports; the check itself is instant
        print(f'papermill {" ".join(params)}: stopped in {took:.1f} s')
    assert untracked(clone) == '', untracked(clone)


def test_hub_check_is_fast_and_honours_offline_mode(monkeypatch):
    from ltvit.checkpoint import check_pretrained, hub_unreachable
    from ltvit.core import UsageError
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, 'HF_HUB_OFFLINE', True)
    assert hub_unreachable() == 'HF_HUB_OFFLINE is set'
    t = time.time()
    with pytest.raises(UsageError, match='HF_HUB_OFFLINE is set'): check_pretrained('vit_small_patch16_224.dino')
    assert time.time() - t < 5
    monkeypatch.setattr(hc, 'HF_HUB_OFFLINE', False)
    with socket.socket() as s:  # a port that refuses: the probe answers at once
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    monkeypatch.setattr(hc, 'ENDPOINT', f'http://127.0.0.1:{port}')
    monkeypatch.delenv('http_proxy', raising=False); monkeypatch.delenv('HTTP_PROXY', raising=False)
    t = time.time()
    assert 'refused' in hub_unreachable().lower() and time.time() - t < 5
    with pytest.raises(UsageError, match='neither an existing file nor a timm pre-trained model'):
        check_pretrained('no_such_model_name')


# --- the demo, and Lab -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_says_what_it_does_and_points_to_what_exists(clone, tmp_path):
    "`./dev demo` (two epochs): each long step announced, paths that open from where the user stands, no noise."
    r = subprocess.run(['./dev', 'demo', '-p', 'epochs', '2'], cwd=clone, capture_output=True, text=True,
                       env=user_env(tmp_path), timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert re.search(r'Generating [\d,]+ synthetic phantoms of \d+ px in .*: about \d+ (s|min) on', out), out[:2000]
    assert re.search(r'epoch +1/2 .* s, about \d+ (s|min) left', out), out[-3000:]
    folder = re.search(r'^Run folder (\S+):', out, re.M)[1]
    assert (clone / folder / 'best.safetensors').is_file(), folder  # relative to where ./dev was run
    opened = re.search(r'open it with (\./dev lab (\S+))\)', out)
    assert opened and (clone / opened[2]).is_file(), out[-500:]
    for noise in ('DeprecationWarning', 'deprecated', 'Kernel is running over TCP', 'Traceback'):
        assert noise not in out, noise
    assert untracked(clone) == '', untracked(clone)


def _lab(clone: Path, env: dict, path: str, user: int | None = None):
    "Start `./dev lab PATH` (as `user`, else as whoever runs the tests): the process, its URL and token."
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    cmd = ['./dev', 'lab', path, '--no-browser', f'--port={port}', '--ip=127.0.0.1', '--IdentityProvider.token=t0k']
    if user is not None: cmd = ['setpriv', f'--reuid={user}', f'--regid={user}', '--clear-groups', *cmd]
    proc = subprocess.Popen(cmd, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f'http://127.0.0.1:{port}'
    for _ in range(120):
        if proc.poll() is not None: pytest.fail(f'./dev lab stopped: {proc.stdout.read()[-2000:]}')
        try: urllib.request.urlopen(f'{url}/api/status?token=t0k', timeout=2); return proc, url
        except OSError: time.sleep(0.5)
    proc.kill(); pytest.fail('./dev lab did not start within 60 s')


@pytest.mark.slow
@pytest.mark.parametrize('user', ['root or the current user', 'an unprivileged user'])
def test_dev_lab_opens_the_path_it_is_given(clone, tmp_path, user):
    "`./dev lab runs/demo.ipynb` serves the repository: the demo's notebook opens; nbs/ notebooks too."
    (clone / 'runs').mkdir(exist_ok=True)
    shutil.copy(clone / 'nbs' / '05_train.ipynb', clone / 'runs' / 'demo.ipynb')
    env = user_env(tmp_path, HOME=str(tmp_path / 'home'), JUPYTER_RUNTIME_DIR=str(tmp_path / 'rt'))
    uid = None
    if user == 'an unprivileged user':
        if os.getuid() != 0 or not shutil.which('setpriv'): pytest.skip('needs root and setpriv to switch user')
        uid = 65534
        if subprocess.run(['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', 'bash', '-c',
                           '"$0" -c 0', sys.executable], capture_output=True).returncode:
            pytest.skip(f'this environment\'s Python ({os.path.realpath(sys.executable)}) cannot be run by another user')
        for p in (tmp_path, clone.parent, clone, clone / 'runs'): os.chmod(p, 0o777)
    try:
        proc, url = _lab(clone, env, 'runs/demo.ipynb', uid)
        try:
            first = urllib.request.urlopen(f'{url}/?token=t0k', timeout=10).geturl()
            assert first.split('?')[0].endswith('/lab/tree/runs/demo.ipynb'), first
            for nb in ('runs/demo.ipynb', 'nbs/guides/tour.ipynb'):
                model = json.load(urllib.request.urlopen(f'{url}/api/contents/{nb}?token=t0k', timeout=10))
                meta = model['content']['metadata']
                from ipykernel.ipkernel import IPythonKernel
                assert meta['language_info'] == IPythonKernel.language_info, meta  # what the kernel will report
                assert meta['kernelspec']['display_name'] != 'python3', meta
        finally:
            proc.terminate(); proc.wait(timeout=30)
    finally:
        (clone / 'runs' / 'demo.ipynb').unlink()
    assert untracked(clone) == '', untracked(clone)
