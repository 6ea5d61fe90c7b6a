"""The docs site: every page and every picture it references exists, and the committed result pages show
exactly the figures and tables of the latest quick-preset results (the current quick grid's runs)."""
import glob
import json
import re
from pathlib import Path

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
        files |= {Path(p) for p in glob.glob(str(ROOT / pat))}
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
        assert str(p.relative_to(ROOT)) in listed, f'{p.relative_to(ROOT)} is rendered but not in the sidebar or navbar'
    for n in PAPER_NOTEBOOKS: assert (PAPER / f'{n}.ipynb') in pages


def test_saved_figures_and_tables_are_published_with_the_site():
    q, _ = _pages()
    published = {Path(p) for pat in q['project']['resources'] for p in glob.glob(str(ROOT / pat))}
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
        assert 'Preset `quick`' in m['caption'] and any(m['caption'] in s for s in md), f'{p.name}: caption not shown'
        for f in m['files']: assert (p.parent / f).is_file(), f'{p.name} lists {f}, which does not exist'
        if m['kind'] == 'table':
            assert (p.parent / f'{m["name"]}.md').read_text() in md, f'{name}.ipynb does not show the saved {m["name"]}.md'
        else:
            assert (p.parent / f'{m["name"]}.png').read_bytes() in png, f'{name}.ipynb does not show the saved {m["name"]}.png'
    # and nothing it shows is an older artefact
    assert sum(m['kind'] == 'figure' for _, m in mine) == len(png)
