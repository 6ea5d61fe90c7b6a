"""The docs site: every page and every picture it references exists, and the committed result pages show
exactly the figures and tables of the latest quick-preset results (the current quick grid's runs)."""
import ast
import glob
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ltvit.experiments import PAPER_NOTEBOOKS, make_grid

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / 'nbs' / 'paper'
IMAGE = re.compile(r'!\[[^\]]*\]\(([^)\s]+)')


def _pages():
    q = yaml.safe_load((ROOT / '_quarto.yml').read_text())
    files = set()
    for pat in q['project']['render']:
        files |= {Path(p) for p in glob.glob(str(ROOT / 'nbs' / pat))}  # the site is rendered from nbs/ (processed)
    return q, sorted(files)


def _markdown(page: Path) -> str:
    if page.suffix == '.ipynb':
        cells = json.loads(page.read_text())['cells']
        return '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
    return page.read_text()


def test_every_page_is_in_the_navigation():
    q, pages = _pages()
    listed = json.dumps(q['website'])
    for p in pages:
        assert str(p.relative_to(ROOT / 'nbs')) in listed, f'{p.relative_to(ROOT)} is rendered but not in the sidebar or navbar'
    for n in PAPER_NOTEBOOKS: assert (PAPER / f'{n}.ipynb') in pages
    # the paper first: the overview of every verdict, then the result pages, then the guides, then the library
    side = q['website']['sidebar']['contents']
    sections = [s['section'] for s in side if isinstance(s, dict)]
    assert sections == ['Results', 'Guides', 'Library'], sections
    assert side[1]['contents'][0] == 'results.ipynb' and set(side[1]['contents'][1:]) == {f'paper/{n}.ipynb' for n in PAPER_NOTEBOOKS}
    assert q['website']['navbar']['left'][1] == {'text': 'Results', 'href': 'results.ipynb'}


def test_saved_figures_and_tables_are_published_with_the_site():
    q, _ = _pages()
    published = {Path(p) for pat in q['project']['resources'] for p in glob.glob(str(ROOT / 'nbs' / pat))}
    saved = {p for p in PAPER.glob('*/*') if p.parent.name in ('figures', 'tables')}
    assert saved and saved <= published, sorted(saved - published)[:5]


def test_every_picture_and_local_link_exists():
    _, pages = _pages()
    for page in pages:
        md = _markdown(page)
        for target in IMAGE.findall(md) + re.findall(r'\]\(([^)\s#]+\.(?:ipynb|qmd))', md):
            if target.startswith(('http://', 'https://')): continue
            assert (page.parent / target).exists(), f'{page.relative_to(ROOT)} references {target}, which does not exist'




@pytest.mark.parametrize('name', sorted(PAPER_NOTEBOOKS))
def test_result_page_shows_the_latest_quick_results(name, notebook_outputs):
    "Committed executed on the current quick grid: each saved figure/table is shown as saved, with the preset in its caption."
    nb = PAPER / f'{name}.ipynb'
    md, png = notebook_outputs(nb)
    assert md or png, f'{name}.ipynb is committed without outputs: run ltvit_paper --preset quick --publish'
    quick = make_grid('quick')
    ids = {quick.id(n) for n in quick.runs}
    metas = [(p, json.loads(p.read_text())) for p in sorted(PAPER.glob('*/*.json'))]
    mine = [(p, m) for p, m in metas if m['notebook'] == name]
    assert mine, f'nothing saved by {name}'
    for p, m in mine:
        assert m['preset'] == 'quick' and m['missing'] == [], f'{p.name}: preset {m["preset"]}, missing {m["missing"]}'
        stale = set(m['runs']) - ids
        assert not stale, f'{p.name} comes from runs that are not in the current quick grid: {sorted(stale)}; re-run ltvit_paper --preset quick --publish'
        if m['name'].startswith('verdict_'):  # saved for the front page; the page shows it as its verdict block
            v = pd.read_csv(p.parent / f'{m["name"]}.csv').iloc[0]
            assert any(f'Verdict: {v["verdict"]}.' in s for s in md), f'{name}.ipynb does not show its verdict'
            continue
        assert 'Preset `quick`' in m['caption'] and any(m['caption'] in s for s in md), f'{p.name}: caption not shown'
        for f in m['files']: assert (p.parent / f).is_file(), f'{p.name} lists {f}, which does not exist'
        if m['kind'] == 'table':
            assert (p.parent / f'{m["name"]}.md').read_text() in md, f'{name}.ipynb does not show the saved {m["name"]}.md'
        else:
            assert (p.parent / f'{m["name"]}.png').read_bytes() in png, f'{name}.ipynb does not show the saved {m["name"]}.png'
    # and nothing it shows is an older artefact
    assert sum(m['kind'] == 'figure' for _, m in mine) == len(png)


# --- the documented build: nbdev's processing of every page (what Quarto renders), checked page by page ---

LINK = re.compile(r'\]\(([^)\s]+)\)|src="([^"]+)"')


@pytest.fixture(scope='module')
def processed():
    "Run `./dev docs` as documented; without Quarto it must process every page, then stop with exit status 3."
    env = dict(os.environ, LTVIT_VENV=sys.prefix)
    r = subprocess.run(['bash', str(ROOT / 'dev'), 'docs'], cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    out = r.stdout + r.stderr
    assert 'Traceback' not in out, out[-4000:]
    if shutil.which('quarto'): assert r.returncode == 0, out[-4000:]
    else:
        assert r.returncode == 3 and 'Quarto renders the final HTML' in r.stderr, out[-4000:]
        assert 'install' not in r.stdout.lower() and not (ROOT / '.installing').exists()  # it never installs anything
    return ROOT / '_proc'


def _rendered(q) -> list[Path]:
    return sorted({Path(p).relative_to(ROOT / 'nbs') for pat in q['project']['render'] for p in glob.glob(str(ROOT / 'nbs' / pat))})


def _page_text(p: Path) -> str:
    if p.suffix != '.ipynb': return p.read_text()
    parts = []
    for c in json.loads(p.read_text())['cells']:
        if c['cell_type'] == 'markdown': parts.append(''.join(c['source']))
        for o in c.get('outputs', []):
            parts.append(''.join(o.get('data', {}).get('text/markdown', '')))
    return '\n'.join(parts)


def test_every_page_is_processed_and_its_links_resolve(processed):
    q = yaml.safe_load((ROOT / '_quarto.yml').read_text())
    pages = _rendered(q)
    assert len(pages) >= 19 and Path('index.ipynb') in pages
    assert re.sub(r'  repo-(?:url|actions): .*\n', '', (processed / '_quarto.yml').read_text()) == (ROOT / '_quarto.yml').read_text()
    for rel in pages: assert (processed / rel).is_file(), f'{rel} was not processed'
    for entry in re.findall(r'(?:href: |- )([\w./-]+\.(?:ipynb|qmd))', (ROOT / '_quarto.yml').read_text()):
        assert (processed / entry).is_file(), f'the navigation names {entry}, which is not a page'
    for rel in pages:
        for a, b in LINK.findall(_page_text(processed / rel)):
            target = (a or b).split('#')[0]
            if not target or target.startswith(('http://', 'https://', 'mailto:', 'data:')): continue
            assert (processed / rel).parent.joinpath(target).exists(), f'{rel} links to {target}, which is not in the site'


def _words(text: str) -> str:
    "Text as its words alone: link targets, markup and spacing dropped (nbdev's processing adds links to names)."
    return ' '.join(re.findall(r'\w+', re.sub(r'\]\([^)]*\)', ']', text))).lower()


def test_every_paragraph_of_every_page_survives_processing(processed):
    "nbdev takes a notebook's title and description from its first cell and empties that cell: nothing else may be in it."
    q = yaml.safe_load((ROOT / '_quarto.yml').read_text())
    lost = []
    for rel in _rendered(q):
        src = ROOT / 'nbs' / rel
        if src.suffix != '.ipynb': continue
        cells = [c for c in json.loads(src.read_text())['cells'] if c['cell_type'] == 'markdown']
        done = _words(_page_text(processed / rel))
        for k, c in enumerate(cells):
            text = ''.join(c['source'])
            if k == 0:  # the title and description: nbdev moves them into the page's front matter
                text = '\n'.join(l for l in text.splitlines() if not l.startswith(('# ', '>')))
            for para in re.split(r'\n\s*\n', text):
                if re.match(r'#+ .* -$', para.strip()): continue  # nbdev's way to keep a heading out of the docs
                if _words(para) and _words(para) not in done: lost.append(f'{rel}: {para.strip()[:80]!r}')
    assert not lost, lost


LIBRARY = sorted(p for p in (ROOT / 'nbs').glob('[0-9]*.ipynb')
                 if any(''.join(c['source']).startswith('#| default_exp') for c in json.loads(p.read_text())['cells']))


@pytest.mark.parametrize('nb', LIBRARY, ids=[p.name for p in LIBRARY])
def test_library_page_shows_its_api_and_its_examples(processed, nb):
    "Every exported function and class has its show_doc entry; every visible example cell carries its output."
    cells = json.loads((processed / nb.name).read_text())['cells']
    mod = next(''.join(c['source']).split()[2] for c in json.loads(nb.read_text())['cells']
               if ''.join(c['source']).startswith('#| default_exp'))
    module = importlib.import_module(f'ltvit.{mod}')
    api = [n for n in module.__all__ if callable(getattr(module, n)) and getattr(getattr(module, n), '__module__', '') == module.__name__]
    docs = '\n'.join(''.join(o.get('data', {}).get('text/markdown', '')) for c in cells for o in c.get('outputs', []))
    missing = [n for n in api if not re.search(rf'^#+ {re.escape(n)}\b', docs, re.M)]
    assert not missing, f'{nb.name}: no API reference (show_doc) for {missing}'
    bare = []
    for c in cells:
        src = ''.join(c['source'])
        if c['cell_type'] != 'code' or src.startswith('#|') or c.get('outputs'): continue
        if all(isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)) for n in ast.parse(src).body):
            continue  # imports, or a helper defined for the examples below
        bare.append(src[:80])
    assert not bare, f'{nb.name}: example cells shown without their output (execute the notebook and commit it): {bare}'


def test_saving_a_notebook_in_jupyterlab_leaves_git_clean(tmp_path):
    "Lab's contents manager, configured as `./dev lab` configures it, saves a read notebook byte for byte as committed."
    import asyncio
    from traitlets.utils.importstring import import_item
    dev = (ROOT / 'dev').read_text()
    hook = re.search(r'--ContentsManager\.pre_save_hook=(\S+)', dev)
    manager = re.search(r'--ServerApp\.contents_manager_class=(\S+)', dev)
    assert hook and manager, './dev lab does not install its contents manager and pre-save hook'
    shutil.copy(ROOT / 'settings.ini', tmp_path / 'settings.ini')  # the hook reads jupyter_hooks from it
    shutil.copytree(ROOT / 'nbs', tmp_path / 'nbs', ignore=shutil.ignore_patterns('figures', 'tables', '.*'))
    cm = import_item(manager.group(1))(root_dir=str(tmp_path), pre_save_hook=hook.group(1))

    async def read_and_save(rel):
        content = (await cm.get(rel, content=True))['content']
        assert content['metadata']['language_info']['version'] == sys.version.split()[0]  # as the kernel reports it
        # what a kernel session adds before Lab autosaves: execution counts, timing metadata
        for c in content['cells']:
            if c['cell_type'] == 'code': c['execution_count'] = 3; c['metadata']['execution'] = {'iopub.status.idle': 'now'}
        await cm.save({'type': 'notebook', 'format': 'json', 'content': content}, rel)

    for nb in sorted((tmp_path / 'nbs').rglob('*.ipynb')):
        before = nb.read_bytes()
        asyncio.run(read_and_save(str(nb.relative_to(tmp_path))))
        assert nb.read_bytes() == before, f'saving {nb.relative_to(tmp_path)} in JupyterLab changes the committed file'


def test_published_stand_ins_pre_trained():
    "The quick grid's stand-ins, as published: DINO's teacher neither uniform nor on few prototypes, MAE below patch means."
    import math
    from ltvit.pretrain import DINOHead
    quick, root = make_grid('quick'), PAPER / 'results' / 'quick'
    k = DINOHead(8).last_layer.weight_v.shape[0]  # the prototypes of the stand-in's head
    h = pd.read_csv(root / quick.id('pretrain-DINO') / 'history.csv').iloc[-1]
    assert h['teacher_entropy'] < 0.9 * math.log(k), f'DINO collapsed to the uniform distribution: {h.to_dict()}'
    assert h['batch_entropy'] > 0.1 * math.log(k), f'DINO collapsed onto few prototypes: {h.to_dict()}'
    assert h['batch_entropy'] - h['teacher_entropy'] > 0.5  # the teacher's output depends on the image
    mae = pd.read_csv(root / quick.id('pretrain-MAE') / 'history.csv').iloc[-1]
    assert mae['val_loss'] < 0.5, mae.to_dict()  # normalised patches: predicting each patch's mean scores 1.0
    for name in [n for n in quick.runs if n.startswith('pretrain-ImageNet')]:
        assert pd.read_csv(root / quick.id(name) / 'history.csv')['val_r2'].iloc[-1] > 0.5, name


# --- the result pages as a reader's browser shows them: the verdict in the first screen ---

CHROMIUM = next((shutil.which(n) for n in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(n)), None)
DIRECTIVE = re.compile(r'^#\|\s*([\w-]+)\s*:?\s*(.*)$')
# The site's page as Quarto lays it out (theme cosmo, _quarto.yml's 260-px sidebar): a 56-px navbar, the title
# block, then the body in a column about 740 px wide at a 1280-px window, 17-px body text. Used when Quarto is
# not installed to render _docs/; with Quarto, the test reads Quarto's own HTML.
SITE_CSS = """
body { margin: 0; font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; font-size: 17px; line-height: 1.5; }
nav { height: 56px; background: #2780e3; }
main { width: 740px; margin: 0 0 0 300px; padding: 0 16px 40px; }
h1 { font-size: 2.2rem; margin: 2rem 0 .5rem; line-height: 1.2; } h2 { font-size: 1.65rem; margin: 2rem 0 1rem; }
h3 { font-size: 1.35rem; } p.description { font-size: 1.1rem; margin-bottom: 2rem; }
blockquote { border-left: .25rem solid #e9ecef; padding: 0 .75rem; margin: 0 0 1rem; color: #555; }
pre { font-size: .875em; white-space: pre-wrap; background: #f8f9fa; padding: .4rem; margin: 0 0 1rem; }
details { margin: 0 0 .5rem; } summary { font-size: .875em; color: #666; }
table { font-size: .875em; border-collapse: collapse; } img { max-width: 100%; }
"""
MEASURE = """<script>
const v = [...document.querySelectorAll('strong')].find(e => e.textContent.startsWith('Verdict:'));
document.body.setAttribute('data-verdict-bottom', v ? v.getBoundingClientRect().bottom : -1);
</script>"""


def _site_html(nb_path: Path) -> str:
    "A processed notebook as the site's HTML page (title block, markdown, outputs; code folded or hidden per directive)."
    import html
    import mistune
    md = mistune.create_markdown(escape=False, plugins=['table'])  # raw HTML passes, as in pandoc (comments vanish)
    nb, body = json.loads(nb_path.read_text()), []
    for c in nb['cells']:
        s = ''.join(c['source'])
        if c['cell_type'] == 'raw' and s.startswith('---'):
            front = yaml.safe_load(s.strip().strip('-'))
            body.append(f"<h1>{html.escape(str(front.get('title', '')))}</h1>"
                        f"<p class='description'>{html.escape(str(front.get('description', '')))}</p>")
        elif c['cell_type'] == 'markdown': body.append(md(s))
        elif c['cell_type'] == 'code':
            opts = {m[1]: m[2] for m in map(DIRECTIVE.match, s.splitlines()) if m}
            code = html.escape('\n'.join(l for l in s.splitlines() if not DIRECTIVE.match(l)))
            if 'hide' in opts or opts.get('include') == 'false': continue
            if opts.get('code-fold') == 'true': body.append(f'<details><summary>Code</summary><pre>{code}</pre></details>')
            elif opts.get('echo') != 'false' and code.strip(): body.append(f'<pre>{code}</pre>')
            for o in c.get('outputs', []):
                d = o.get('data', {})
                if 'text/markdown' in d: body.append(md(''.join(d['text/markdown'])))
                elif 'image/png' in d: body.append(f"<img src='data:image/png;base64,{d['image/png'].strip()}'>")
                elif 'text/html' in d: body.append(''.join(d['text/html']))
                elif o.get('output_type') == 'stream': body.append(f"<pre>{html.escape(''.join(o['text']))}</pre>")
                elif 'text/plain' in d: body.append(f"<pre>{html.escape(''.join(d['text/plain']))}</pre>")
    return f"<html><head><style>{SITE_CSS}</style></head><body><nav></nav><main>{''.join(body)}</main>{MEASURE}</body></html>"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason='Chromium is not installed (apt-get install chromium)')
@pytest.mark.parametrize('name', PAPER_NOTEBOOKS)
def test_result_page_opens_with_its_verdict(processed, name, tmp_path):
    """Headless Chromium at 1280x1800 opens the result page as the site shows it (Quarto's HTML when Quarto built
    _docs/, else the processed notebook laid out in the site's column) and finds the verdict within the first 900 px;
    nothing but the title, description and the (folded) verdict code comes before it."""
    quarto = ROOT / '_docs' / 'paper' / f'{name}.html'
    page = tmp_path / f'{name}.html'
    page.write_text(quarto.read_text().replace('</body>', MEASURE + '</body>') if quarto.is_file()
                    else _site_html(processed / 'paper' / f'{name}.ipynb'))
    r = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--virtual-time-budget=5000',
                        f'--user-data-dir={tmp_path / "profile"}', '--window-size=1280,1800', '--dump-dom',
                        page.as_uri()], capture_output=True, text=True, timeout=120)
    bottom = re.search(r'data-verdict-bottom="([-\d.]+)"', r.stdout)
    assert bottom, f'{name}: Chromium did not lay the page out:\n{r.stderr[-2000:]}'
    assert 0 < float(bottom[1]) <= 900, f'{name}: the verdict ends {float(bottom[1]):.0f} px down (none found: -1)'
    cells = json.loads((processed / 'paper' / f'{name}.ipynb').read_text())['cells']
    first = next(i for i, c in enumerate(cells) if '**Verdict:' in json.dumps(c.get('outputs', [])))
    for c in cells[:first]:  # before the verdict: the front matter, headings, hidden or folded set-up code
        s = ''.join(c['source'])
        if c['cell_type'] == 'code': assert '#| code-fold: true' in s or '#| hide' in s, f'{name}: code before the verdict:\n{s[:300]}'
        elif c['cell_type'] == 'markdown': assert all(l.startswith(('#', '<!--')) or not l.strip() for l in s.splitlines()), \
            f'{name}: prose before the verdict: {s[:200]!r}'


def test_every_saved_figure_is_legible_in_the_site_column():
    "Each committed figure's provenance records its smallest text as shown in the 740-px column: at least 8 pt."
    from ltvit.results import COLUMN_PX, LEGIBLE_PT
    small = {}
    for j in sorted((PAPER / 'figures').glob('*.json')):
        leg = json.loads(j.read_text()).get('legibility')
        assert leg, f'{j.name}: no legibility record (saved by an older Artefacts.figure: regenerate the page)'
        if leg['smallest_text_pt_shown'] < LEGIBLE_PT: small[j.stem] = leg
    assert not small, f'text under {LEGIBLE_PT} pt at {COLUMN_PX} px: {small}'


INVENTED = ('.invalid', 'ltvit.github.io', 'github.com/ltvit/')


def _addresses(root: Path) -> list[str]:
    "Every http(s) address in the processed pages and the site configuration."
    found = []
    for p in [*root.rglob('*.ipynb'), *root.rglob('*.qmd'), root / '_quarto.yml']:
        found += re.findall(r'https?://[^\s)\]"\'<>{}\\]+', p.read_text())
    return found


def test_no_page_links_an_address_nothing_confirms(processed):
    """Without a GitHub remote (a clean clone's origin is a folder), no page or setting of the site names an address:
    links to the site's own pages are relative, source links and the repository link are left out."""
    bad = sorted({a for a in _addresses(processed) if any(s in a for s in INVENTED)})
    assert not bad, bad[:20]
    page = (processed / '03a_pretrain.ipynb').read_text()
    assert '02a_checkpoint.ipynb#load_pretrained' in page  # a link to a function's entry, now relative to its page
    origin = subprocess.run(['git', 'remote', 'get-url', 'origin'], cwd=ROOT, capture_output=True, text=True).stdout
    if 'github.com' not in origin:  # this checkout's case; a GitHub remote is tested below
        assert 'repo-url' not in (processed / '_quarto.yml').read_text()
        assert '[source](' not in (processed / '00_core.ipynb').read_text()


@pytest.mark.slow
def test_source_links_follow_the_git_remote(tmp_path):
    "With a GitHub remote, source links and the site's repository link point at it, and only at it."
    repo = tmp_path / 'repo'
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns('.venv', '_proc', '_docs', 'runs', '.git', '*.egg-info'))
    for cmd in (['git', 'init', '-q'], ['git', 'remote', 'add', 'origin', 'git@github.com:someone/ltvit-fork.git']):
        subprocess.run(cmd, cwd=repo, check=True)
    env = dict(os.environ, LTVIT_VENV=sys.prefix)
    r = subprocess.run(['bash', 'dev', 'docs'], cwd=repo, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode in (0, 3) and 'source links to https://github.com/someone/ltvit-fork' in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    proc = repo / '_proc'
    assert 'repo-url: https://github.com/someone/ltvit-fork' in (proc / '_quarto.yml').read_text()
    links = _addresses(proc)
    assert any(a.startswith('https://github.com/someone/ltvit-fork/blob/main/ltvit/core.py#L') for a in links)
    assert not [a for a in links if any(s in a for s in INVENTED)]


VERDICT_TABLES = {'main_comparison': 'claim1', 'initialisations': 'claim2', 'localisation': 'claim3', 'speed': 'speed',
                  'ablation_n2': 'ablation'}


@pytest.mark.parametrize('name', sorted(VERDICT_TABLES))
def test_each_page_states_the_claim_its_verdict_reads(name):
    "The claim a page's verdict table names (what the front page and the overview show) is the one its description states."
    claim = pd.read_csv(PAPER / 'tables' / f'verdict_{VERDICT_TABLES[name]}.csv')['claim'].iloc[0]
    first = ''.join(json.loads((PAPER / f'{name}.ipynb').read_text())['cells'][0]['source'])
    if name != 'ablation_n2': assert claim in first, f'{name}: its description does not state {claim!r}'
    for page in (ROOT / 'nbs' / 'index.ipynb', ROOT / 'nbs' / 'results.ipynb'):
        assert claim in page.read_text(), f'{page.name} does not show the verdict of {name} ({claim!r})'
