"""The project's own contract: packaging, nbdev settings, the docs site's pages."""
import configparser
import glob
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _settings():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini'); return cfg['DEFAULT']


def test_layout():
    for p in ('nbs', 'ltvit', 'settings.ini', 'setup.py', 'README.md', '_quarto.yml', 'tests', '.ci/run', '.gitignore'):
        assert (ROOT / p).exists(), p


def test_setup_py_reads_settings_and_avoids_pkg_resources():
    src = (ROOT / 'setup.py').read_text()
    assert 'pkg_resources' not in src and "settings.ini" in src
    out = subprocess.run([sys.executable, 'setup.py', '--version'], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == _settings()['version'], out.stderr


def test_nbdev_settings():
    s = _settings()
    assert s['tst_flags'].split() == ['notest', 'slow', 'cuda']
    assert s['allowed_cell_metadata_keys'].split() == ['tags']
    assert 'cell_number' not in s  # deprecated and ignored by nbdev 2.4 (cell ids replaced it): a warning per command
    r = subprocess.run([sys.executable, '-W', 'error::DeprecationWarning', '-c',
                        'from nbdev.config import get_config; get_config()'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1000:]  # our settings raise no deprecation warning in nbdev
    assert 'nbdev==2.' in s['dev_requirements'] and 'nbdev' not in s['requirements']


def test_nbdev_clean_keeps_papermill_parameters_tag(tmp_path):
    nb = {'cells': [{'cell_type': 'code', 'execution_count': 3, 'id': 'abc', 'outputs': [],
                     'metadata': {'tags': ['parameters'], 'scrolled': True}, 'source': 'epochs: int = 1  # epochs'}],
          'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}},
          'nbformat': 4, 'nbformat_minor': 5}
    fn = tmp_path / 'p.ipynb'; fn.write_text(json.dumps(nb))
    nbdev_clean = Path(sys.executable).parent / 'nbdev_clean'
    subprocess.run([str(nbdev_clean), '--fname', str(fn)], cwd=ROOT, check=True)
    cell = json.loads(fn.read_text())['cells'][0]
    assert cell['metadata'] == {'tags': ['parameters']} and cell['execution_count'] is None


def _site_pages(node):
    "Every page a sidebar/navbar entry names."
    if isinstance(node, str): yield node
    elif isinstance(node, list):
        for n in node: yield from _site_pages(n)
    elif isinstance(node, dict):
        for k in ('href', 'file'):
            if k in node: yield node[k]
        for k in ('contents', 'left', 'right'):
            if k in node: yield from _site_pages(node[k])


def test_quarto_site_parses_and_every_page_exists():
    q = yaml.safe_load((ROOT / '_quarto.yml').read_text())
    assert q['project']['type'] == 'website'
    assert 'ipynb-filters' not in q  # nbdev 2.3+ has no notebook filter: pages are processed first (./dev docs)
    sections = [s['section'] for s in q['website']['sidebar']['contents'] if isinstance(s, dict)]
    assert sections == ['Results', 'Guides', 'Library']  # the paper first, then the guides, then the library
    pages = list(_site_pages(q['website']['sidebar']['contents'])) + list(_site_pages(q['website']['navbar']))
    assert pages
    for p in pages:
        matches = glob.glob(str(ROOT / 'nbs' / p))  # the site is rendered from nbs/, processed into _proc/
        assert matches, f'_quarto.yml lists {p}, which does not exist'
    # every library notebook is in the Library section
    lib = next(s for s in q['website']['sidebar']['contents'] if isinstance(s, dict) and s['section'] == 'Library')
    listed = set(_site_pages(lib['contents']))
    for nb in sorted((ROOT / 'nbs').glob('[0-9]*.ipynb')):
        if '#| default_exp' not in nb.read_text(): continue  # experiments (papermill) live elsewhere
        assert nb.name in listed, f'{nb.name} is missing from the Library section of _quarto.yml'
    # every render pattern matches something
    for p in q['project']['render']: assert glob.glob(str(ROOT / 'nbs' / p)), f'render pattern {p} matches no page'


def test_docs_workflow_builds_with_quarto():
    "The workflow installs Quarto the official way, then runs the documented build command, after it."
    wf = yaml.safe_load((ROOT / '.github/workflows/docs.yml').read_text())
    steps = [s.get('uses', '') + s.get('run', '') for s in wf['jobs']['docs']['steps']]
    setup = next(i for i, s in enumerate(steps) if 'quarto-actions/setup' in s)
    build = next(i for i, s in enumerate(steps) if s.strip() == './dev docs')
    assert setup < build and 'docs)' in (ROOT / 'dev').read_text()


def test_import_ltvit_exposes_api_and_registers_models():
    out = subprocess.run([sys.executable, '-c', 'import ltvit, timm; print(ltvit.__version__); '
                          'print(" ".join(timm.list_models("ltvit_*"))); print(ltvit.LTViT.__name__, ltvit.NIH_LABELS[0])'],
                         capture_output=True, text=True, check=True)
    lines = out.stdout.split('\n')
    assert lines[0] == _settings()['version']
    assert lines[1].split() == ['ltvit_base_patch16_224', 'ltvit_small_patch16_224', 'ltvit_tiny_patch16_224']
    assert lines[2] == 'LTViT Atelectasis'


def test_jupyter_kernel_imports_editable_ltvit():
    "The `python3` kernel of the environment is this interpreter, and it imports the editable checkout."
    jupyter = Path(sys.executable).parent / 'jupyter'
    out = subprocess.run([str(jupyter), 'kernelspec', 'list', '--json'], capture_output=True, text=True, check=True)
    spec = json.loads(out.stdout)['kernelspecs']['python3']
    argv = json.loads((Path(spec['resource_dir']) / 'kernel.json').read_text())['argv']
    py = shutil.which(argv[0]) or argv[0]
    if argv[0] == 'python': py = sys.executable  # ipykernel's built-in spec: the interpreter running jupyter
    out = subprocess.run([py, '-c', 'import ltvit; print(ltvit.__file__)'], capture_output=True, text=True, check=True, cwd='/')
    assert Path(out.stdout.strip()).resolve().is_relative_to(ROOT / 'ltvit')


def test_every_public_definition_carries_its_own_docstring():
    "The API pages show each definition's own docstring, never one inherited from torch or timm (inspect.getdoc's fallback)."
    import importlib
    import inspect
    missing = []
    for mod_path in sorted((ROOT / 'ltvit').glob('[a-z]*.py')):
        mod = importlib.import_module(f'ltvit.{mod_path.stem}')
        for name in getattr(mod, '__all__', []):
            obj = getattr(mod, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or not obj.__module__.startswith('ltvit'): continue
            if not (obj.__doc__ or '').strip(): missing.append(f'{mod.__name__}.{name}')
            if inspect.isclass(obj):
                for attr, fn in vars(obj).items():
                    fn = getattr(fn, '__func__', fn)
                    if attr.startswith('_') or not inspect.isfunction(fn) or not fn.__module__.startswith('ltvit'): continue
                    if (fn.__doc__ or '').strip(): continue
                    base = next((b for b in obj.__mro__[1:] if attr in vars(b)), None)  # what getdoc falls back to
                    if base is None or not base.__module__.startswith('ltvit'): missing.append(f'{mod.__name__}.{name}.{attr}')
    assert not missing, f'definitions without their own docstring: {missing}'


# --- the library's notebooks in fastcore's shape: small export cells, examples beside what they define ---------
def _notebook_shape():
    "Per library notebook: export cell sizes, stretches of export code without an executed example, example text."
    import ast
    import re
    shape = {}
    for nb in sorted((ROOT / 'nbs').glob('[0-9]*.ipynb')):
        sizes, stretches, examples, defs_per_cell, run = [], [], [], [], 0
        for c in json.loads(nb.read_text())['cells']:
            if c['cell_type'] != 'code': continue
            src = ''.join(c['source'])
            directives = [l for l in src.splitlines() if l.startswith('#|')]
            if any(re.match(r'#\|\s*export', l) for l in directives):
                body = '\n'.join(l for l in src.splitlines() if not l.startswith('#|'))
                n = len([l for l in body.splitlines() if l.strip()])
                sizes.append(n); run += n
                defs_per_cell.append(sum(isinstance(t, (ast.FunctionDef, ast.ClassDef)) for t in ast.parse(body).body))
            elif not directives and src.strip():  # a visible, executed example
                examples.append(src)
                if run: stretches.append(run)
                run = 0
        if run: stretches.append(run)
        shape[nb.name] = dict(sizes=sizes, stretches=stretches, examples='\n'.join(examples), defs=defs_per_cell)
    return shape


def test_export_cells_are_small_and_hold_one_definition():
    import statistics
    shape = _notebook_shape()
    sizes = [n for s in shape.values() for n in s['sizes']]
    assert statistics.median(sizes) <= 15, statistics.median(sizes)
    several = {nb: [k for k in s['defs'] if k > 1] for nb, s in shape.items()}
    assert not any(several.values()), several


def test_every_definition_has_an_example_nearby_and_every_public_name_is_shown():
    import importlib
    import re
    shape = _notebook_shape()
    long = {nb: [n for n in s['stretches'] if n > 80] for nb, s in shape.items()}
    assert not any(long.values()), long
    unshown = []
    for nb, s in shape.items():
        sources = [''.join(c['source']) for c in json.loads((ROOT / 'nbs' / nb).read_text())['cells']]
        mod = next((m for src in sources if (m := re.search(r'^#\|\s*default_exp\s+(\S+)', src, re.M))), None)
        if not mod: continue
        for name in getattr(importlib.import_module(f'ltvit.{mod.group(1)}'), '__all__', []):
            if not re.search(rf'\b{re.escape(name)}\b', s['examples']): unshown.append(f'{nb}: {name}')
    assert not unshown, unshown


# Where each measured fact is quoted: (file, pattern whose group 1 is the number, key in benchmarks/measured.yml).
QUOTED = [
    ('README.md', r'whole test suite \(every notebook and tests/; about (\d+) min', 'test_suite_minutes'),
    ('README.md', r'fast tier \(about (\d+) minutes', 'fast_tier_minutes'),
    ('README.md', r'the main job, about (\d+) min', 'demo_minutes'),
    ('README.md', r'--preset quick --jobs 2 [^\n]*\(about (\d+) min on 2 cores\)', 'quick_preset_minutes'),
    ('nbs/guides/development.qmd', r'fast tier for the edit loop \(about (\d+) min', 'fast_tier_minutes'),
    ('nbs/guides/development.qmd', r'the whole suite about (\d+) min', 'test_suite_minutes'),
    ('nbs/guides/reproduce.qmd', r'\(about (\d+) min\) with the six notebooks', 'quick_preset_minutes'),
]


def test_quoted_facts_agree_with_the_one_source():
    "Each measured time README and the guides quote is the one in benchmarks/measured.yml; the paper's GPU hours and run count are the estimator's."
    facts = yaml.safe_load((ROOT / 'benchmarks' / 'measured.yml').read_text())
    for file, pattern, key in QUOTED:
        found = re.findall(pattern, (ROOT / file).read_text())
        assert found, f'{file} no longer quotes {key} where expected ({pattern!r})'
        assert {int(x) for x in found} == {facts[key]}, f'{file} says {found} for {key}; benchmarks/measured.yml says {facts[key]}'
    from ltvit.experiments import estimate_gpu_hours, make_grid
    est = estimate_gpu_hours(make_grid('paper', nih_dir='/data/nih', chexpert_dir='/data/chexpert', vindr_dir='/data/vindr'))
    hours, runs = round(est['GPU hours'].sum()), len(est)
    for file in ('README.md', 'nbs/guides/reproduce.qmd', 'nbs/index.ipynb'):
        text = (ROOT / file).read_text()
        for h, n in re.findall(r'(\d+) GPU hours for (?:all )?(\d+) training runs', text):
            assert (int(h), int(n)) == (hours, runs), f'{file}: {h} GPU hours for {n} runs; the estimator gives {hours} for {runs}'
        for n, h in re.findall(r'\| (\d+) training runs \| (\d+) \|', text):
            assert (int(h), int(n)) == (hours, runs), f'{file}: {n} runs, {h} GPU hours; the estimator gives {runs}, {hours}'
