"""Execute every library notebook (one test per notebook), as `nbdev_test` does, skipping cells flagged
with settings.ini's `tst_flags`. Papermill experiment notebooks have their own tests."""
import configparser
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
cfg = configparser.ConfigParser(); cfg.read(ROOT / 'settings.ini')
SKIP_FLAGS = cfg['DEFAULT']['tst_flags'].split()
# Notebooks run by papermill with parameters (tested in test_train.py)
PAPERMILL = {'05_train.ipynb'}
NOTEBOOKS = sorted(p for p in (ROOT / 'nbs').rglob('*.ipynb')
                   if not any(part.startswith(('_', '.')) for part in p.relative_to(ROOT / 'nbs').parts)
                   and p.name not in PAPERMILL and 'paper' not in p.relative_to(ROOT / 'nbs').parts)


RUN = """
import sys
from pathlib import Path
from nbdev.test import test_nb
ok, secs = test_nb(Path(sys.argv[1]), skip_flags=sys.argv[2].split(), showerr=True)
sys.exit(0 if ok else 1)
"""


SLOW = {'06_grid.ipynb'}  # runs a small grid of processes


@pytest.mark.parametrize('nb', [pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW else p for p in NOTEBOOKS],
                         ids=[str(p.relative_to(ROOT / 'nbs')) for p in NOTEBOOKS])
def test_notebook(nb):
    "Each notebook runs in its own process, as nbdev_test does (notebooks re-register timm models)."
    res = subprocess.run([sys.executable, '-c', RUN, str(nb), ' '.join(SKIP_FLAGS)], capture_output=True, text=True)
    assert res.returncode == 0, f'{nb.name} failed:\n{res.stderr[-6000:]}'


def test_every_library_module_has_a_notebook():
    mods = {p.stem for p in (ROOT / 'ltvit').glob('*.py') if not p.stem.startswith('_')}
    exported = set()
    for nb in NOTEBOOKS:
        for cell in json.loads(nb.read_text())['cells']:
            src = ''.join(cell['source'])
            if src.startswith('#| default_exp '): exported.add(src.split()[2])
    assert mods == exported, f'modules without a notebook: {mods - exported}; notebooks without a module: {exported - mods}'


MACHINE = re.compile(r'(?<![\w.])(?:/tmp/|/var/folders/|/private/var/|/root/|/home/[^/\s]+/|/Users/[^/\s]+/|/work/|[A-Z]:\\\\Users\\\\)'
                     r'|site-packages|\.venv/|\btmp[a-z0-9_]{8}\b')
BAR = re.compile(r'\d+%\|[^|\n]*\|')  # tqdm: "40%|████      | 4/10"
COMMITTED = sorted(p for p in (ROOT / 'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)


def _outputs(nb: Path):
    for k, cell in enumerate(json.loads(nb.read_text())['cells']):
        for out in cell.get('outputs', []):
            text = ''.join(out.get('text', '')) + ''.join(out.get('traceback', []))
            for mime, v in out.get('data', {}).items():
                if mime.startswith('text/') or mime.endswith(('json', 'javascript')):
                    text += ''.join(v) if isinstance(v, list) else str(v)
            yield k, text


@pytest.mark.parametrize('nb', COMMITTED, ids=[str(p.relative_to(ROOT / 'nbs')) for p in COMMITTED])
def test_committed_outputs_show_no_machine_paths_or_progress_bars(nb):
    "What a reader sees was made on some machine; none of that machine (its folders, temporary files, bars) shows."
    bad = []
    for k, text in _outputs(nb):
        for m in list(MACHINE.finditer(text)) + list(BAR.finditer(text)):
            bad.append(f'cell {k}: ...{text[max(0, m.start() - 60):m.end() + 40]!r}...')
        if '\r' in text: bad.append(f'cell {k}: a carriage return (a progress bar redrawn)')
    assert not bad, f'{nb.relative_to(ROOT)}:\n' + '\n'.join(bad[:10]) + (f'\n(+{len(bad) - 10} more)' if len(bad) > 10 else '')


PUBLISHED = sorted(p for d in ('results', 'tables', 'figures') for p in (ROOT / 'nbs' / 'paper' / d).rglob('*')
                   if p.suffix in ('.json', '.csv', '.md', '.tex'))


def test_published_results_and_artefacts_carry_no_machine_paths():
    "The per-run results, tables and figure records the pages read were made on some machine; none of its paths shows."
    assert len(PUBLISHED) > 100
    bad = [f'{p.relative_to(ROOT)}: ...{m.group(0)}...' for p in PUBLISHED for m in MACHINE.finditer(p.read_text())]
    assert not bad, f'{len(bad)} machine paths, first: ' + '\n'.join(bad[:10])
