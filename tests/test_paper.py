"""The paper driver on the tiny preset (same grid shape as quick and paper, toy sizes): the whole grid runs
through papermill, a second run skips everything, a broken run resumes, missing runs are reported with the
command that makes them, every figure and table notebook executes, and a table cell traces back to its run."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ltvit.experiments import PAPER_NOTEBOOKS, PRESETS, make_grid, run_paper_notebooks
from ltvit.grid import run_status
from ltvit.results import VERDICTS, collect, run_table, seed_table

pytestmark = pytest.mark.slow  # trains models / runs a grid

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, '-c', 'import sys; from ltvit.experiments import main; sys.exit(main())']


def ltvit_paper(*args, timeout=1200):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "The tiny preset's grid, run once from scratch by the command line driver (two runs at a time)."
    root = tmp_path_factory.mktemp('grid') / 'tiny'
    t = time.time()
    r = ltvit_paper('--preset', 'tiny', '--runs', str(root), '--jobs', '2', '--no-notebooks')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f'tiny grid: {time.time() - t:.0f} s')
    return make_grid('tiny'), root, r.stdout


def test_grid_runs_every_run_then_skips_them(tiny):
    grid, root, first = tiny
    st = run_status(grid, root)
    assert (st['status'] == 'finished').all(), st[st['status'] != 'finished']
    assert f'{len(grid)} runs, 0 finished (skipped)' in first and first.count('  done ') == len(grid)
    for name in ('nih-ltvit-ImageNet', 'chexpert-vit-ImageNet'):  # training runs went through the notebook
        d = grid.folder(name, root)
        assert (d / 'run.ipynb').is_file() and (d / 'best.safetensors').is_file()
        assert json.loads((d / 'params.json').read_text())['out_dir'] == str(d)
    again = ltvit_paper('--preset', 'tiny', '--runs', str(root), '--no-notebooks')
    assert again.returncode == 0 and f'{len(grid)} finished (skipped)' in again.stdout and ' start ' not in again.stdout


def test_broken_run_resumes_from_its_checkpoint(tiny):
    grid, root, _ = tiny
    d = grid.folder('nih-ltvit-random', root)
    before = json.loads((d / 'metrics.json').read_text())
    (d / 'metrics.json').unlink()  # interrupted after its last checkpoint, before the results were written
    assert run_status(grid, root).set_index('name').loc['nih-ltvit-random', 'status'] == 'broken'
    r = ltvit_paper('--preset', 'tiny', '--runs', str(root), '--only', 'nih-ltvit-random', '--no-notebooks')
    assert r.returncode == 0, r.stderr[-2000:]
    assert '1 to resume, 0 to start' in r.stdout and 'resume   nih-ltvit-random' in r.stdout
    assert 'Resuming' in (d / 'log.txt').read_text().split('=== ')[-1]  # continued, did not start over
    after = json.loads((d / 'metrics.json').read_text())
    assert after['mean_auc'] == before['mean_auc'] and after['steps'] == before['steps']


def test_missing_runs_are_reported_with_the_command_that_makes_them(tiny, tmp_path):
    grid, root, _ = tiny
    gone = grid.folder('nih-vit-DINO', root)
    moved = tmp_path / gone.name
    shutil.move(gone, moved)
    try:
        t = run_table(grid, root, 'init', {'table': 'init', 'seed': 0}, ['init', 'model'], {'AUC': lambda m: m['mean_auc']})
        assert [r.name for r in t.missing] == ['nih-vit-DINO'] and t.formatted().loc[('DINO', 'ViT'), 'AUC'] == 'missing'
        assert t.command() == f'ltvit_paper --preset tiny --runs {root} --only nih-vit-DINO'
        # the notebook says so instead of failing or showing an old number, and keeps the saved artefact
        saved = tmp_path / 'out' / 'tables' / 'initialisations.md'
        saved.parent.mkdir(parents=True); saved.write_text('the complete table of an earlier run')
        nb = run_paper_notebooks('tiny', root, ['initialisations'], save_dir=tmp_path / 'out', log=lambda s: None)['initialisations']
        text = json.dumps(json.loads(nb.read_text())['cells'])
        assert 'runs are not finished' in text and '--only nih-vit-DINO' in text and 'Not saved (incomplete)' in text
        assert '| DINO ' in text and 'missing' in text  # the partial table is shown, its missing cells marked
        assert saved.read_text() == 'the complete table of an earlier run'  # never overwritten by an incomplete one
        assert not (tmp_path / 'out' / 'tables' / 'initialisations.json').exists()
        # the reported command makes it
        cmd = t.command().split()[1:]
        r = ltvit_paper(*cmd, '--no-notebooks')
        assert r.returncode == 0 and '1 to start' in r.stdout, r.stderr[-2000:]
        assert seed_table(grid, root, 'init', {'table': 'init'}, ['init', 'model']).complete
    finally:
        if not gone.exists(): shutil.move(moved, gone)


@pytest.fixture(scope='module')
def site(tiny, tmp_path_factory):
    "Every figure and table notebook executed on the finished tiny grid."
    grid, root, _ = tiny
    out = tmp_path_factory.mktemp('site')
    return run_paper_notebooks('tiny', root, save_dir=out, log=lambda s: None), out


def test_every_paper_notebook_executes_and_shows_what_it_saved(site, notebook_outputs):
    done, out = site
    assert set(done) == set(PAPER_NOTEBOOKS)
    metas = [json.loads(p.read_text()) for p in sorted(out.glob('*/*.json'))]
    assert {m['notebook'] for m in metas} == set(PAPER_NOTEBOOKS)  # every notebook saved something
    for m in metas:
        md, png = notebook_outputs(done[m['notebook']])
        assert m['preset'] == 'tiny' and m['missing'] == [] and 'Preset `tiny`' in m['caption']
        if m['name'].startswith('verdict_'):  # saved for the front page; the page shows it as its verdict block
            v = pd.read_csv(out / 'tables' / f'{m["name"]}.csv').iloc[0]
            assert v['verdict'] in VERDICTS and any(f'Verdict: {v["verdict"]}.' in s for s in md), m['name']
            continue
        assert any(m['caption'] in s for s in md), f'{m["name"]}: caption not shown'
        if m['kind'] == 'table':
            assert (out / 'tables' / f'{m["name"]}.md').read_text() in md  # the notebook shows the saved table
            assert 'missing' not in (out / 'tables' / f'{m["name"]}.md').read_text()
        else:
            assert (out / 'figures' / f'{m["name"]}.png').read_bytes() in png  # and the saved figure, byte for byte
            assert (out / 'figures' / f'{m["name"]}.pdf').read_bytes()[:4] == b'%PDF'
            assert (out / 'figures' / f'{m["name"]}.svg').read_text().lstrip().startswith('<?xml')
    reported = pd.read_csv(out / 'tables' / 'main_reported.csv')
    assert (reported['kind'] == 'reported').all() and reported['source'].notna().all()


def test_a_table_cell_traces_to_its_run(tiny, site):
    grid, root, _ = tiny
    _, out = site
    meta = json.loads((out / 'tables' / 'main_comparison.json').read_text())
    chx = grid.meta['datasets']['chexpert']  # the tiny preset's phantoms in CheXpert's schema
    assert chx == 'synthetic (CheXpert schema)'
    recipe = f'layer decay {PRESETS["tiny"]["layer_decay"]}'
    run_ids = meta['cells'][str((chx, recipe, 'LT-ViT'))]['Mean AUC (%)']  # one run per seed
    assert len(run_ids) == 2 and all(grid.id(n) in meta['runs'] for n in run_ids)
    folders = [root / grid.id(n) for n in run_ids]
    configs = [json.loads((f / 'config.json').read_text()) for f in folders]
    assert all(c['config']['dataset'] == 'chexpert' and c['config']['model'].startswith('ltvit_') for c in configs)
    assert sorted(c['config']['seed'] for c in configs) == [0, 1] and configs[0]['split_sizes']['test'] > 0
    # the cell is the mean over seeds of what each run measured itself
    aucs = [json.loads((f / 'metrics.json').read_text())['mean_auc'] for f in folders]
    csv = pd.read_csv(out / 'tables' / 'main_comparison.csv').set_index(['dataset', 'recipe', 'model'])
    assert abs(csv.loc[(chx, recipe, 'LT-ViT'), 'Mean AUC (%)'] - 100 * sum(aucs) / len(aucs)) < 1e-4
    assert csv.loc[(chx, recipe, 'LT-ViT'), 'seeds'] == 2
    # the ResultTable API gives the same runs
    rs = [r for r in collect(grid, root, table='main', recipe=recipe) if r.tag['dataset'] == chx and r.tag['model'] == 'LT-ViT']
    assert [r.name for r in rs] == list(run_ids) and [r.folder for r in rs] == folders


def test_published_pages_re_execute_from_the_committed_results(tmp_path):
    "On a clone without the grid (no runs/quick), every paper page reads nbs/paper/results/quick and remakes its tables."
    published = ROOT / 'nbs' / 'paper' / 'results' / 'quick'
    assert (published / 'grid.json').is_file(), 'nbs/paper/results/quick is not committed'
    size = sum(f.stat().st_size for f in published.rglob('*') if f.is_file())
    assert size < 15e6, f'the published results are {size / 1e6:.1f} MB'
    assert not any(f.suffix in ('.safetensors', '.pth', '.npy', '.png') for f in published.rglob('*'))  # no weights or images
    out, env = tmp_path / 'out', {**__import__('os').environ, 'LTVIT_RUNS': str(tmp_path / 'no_runs')}
    for name in PAPER_NOTEBOOKS:
        dst = tmp_path / f'{name}.ipynb'
        r = subprocess.run([sys.executable, '-m', 'papermill', str(ROOT / 'nbs' / 'paper' / f'{name}.ipynb'), str(dst),
                            '--cwd', str(ROOT / 'nbs' / 'paper'), '--no-progress-bar', '-p', 'save_dir', str(out)],
                           capture_output=True, text=True, env=env, timeout=900)
        assert r.returncode == 0, f'{name}: {r.stderr[-3000:]}'
        assert 'reading the published results in nbs/paper/results/quick' in dst.read_text(), name
    metas = [json.loads(f.read_text()) for f in sorted(out.glob('*/*.json'))]
    assert {m['notebook'] for m in metas} == set(PAPER_NOTEBOOKS)  # every page saved what it shows
    figures = {f.name for f in (out / 'figures').glob('*.png')}
    assert figures == {f.name for f in (ROOT / 'nbs' / 'paper' / 'figures').glob('*.png')}
    made = sorted((out / 'tables').glob('*.csv'))
    assert {f.name for f in made} == {f.name for f in (ROOT / 'nbs' / 'paper' / 'tables').glob('*.csv')}
    for f in made:
        meta = json.loads(f.with_suffix('.json').read_text())
        assert meta['missing'] == [], f.name
        committed = pd.read_csv(ROOT / 'nbs' / 'paper' / 'tables' / f.name)
        pd.testing.assert_frame_equal(pd.read_csv(f), committed, check_exact=True, obj=f.name)


def test_tiny_grid_through_slurm_gives_the_local_launchers_tables(tiny, site, slurm_cluster, tmp_path):
    "`--launcher slurm` on a real one-node Slurm: every run a job in its folder, the same numbers and tables."
    grid, local, _ = tiny
    _, local_out = site
    root = tmp_path / 'tiny-slurm'
    t = time.time()
    r = ltvit_paper('--preset', 'tiny', '--runs', str(root), '--launcher', 'slurm', '--gpus-per-run', '0',
                    '--cpus-per-run', '1', '--time', '30:00', '--poll', '2', '--no-notebooks', timeout=2400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f'tiny grid through Slurm: {time.time() - t:.0f} s')
    assert f'{len(grid)} runs, 0 finished, 0 already queued, {len(grid)} submitted.' in r.stdout
    st = run_status(grid, root)
    assert (st['status'] == 'finished').all(), st[st['status'] != 'finished']
    for n in grid.runs:  # every run: one job, its script and Slurm's output in its folder; the same numbers
        d = grid.folder(n, root)
        assert (d / 'slurm-job.sh').is_file() and len(list(d.glob('slurm-*.out'))) == 1
        mine, theirs = (json.loads((f / 'metrics.json').read_text()) for f in (d, grid.folder(n, local)))
        if 'mean_auc' in theirs: assert abs(mine['mean_auc'] - theirs['mean_auc']) < 1e-6, n
    out = tmp_path / 'out'
    run_paper_notebooks('tiny', root, ['main_comparison', 'ablation_n2'], save_dir=out, log=lambda s: None)
    for name in ('main_comparison', 'ablation_n2'):
        assert pd.read_csv(out / 'tables' / f'{name}.csv').equals(pd.read_csv(local_out / 'tables' / f'{name}.csv')), name
    again = ltvit_paper('--preset', 'tiny', '--runs', str(root), '--launcher', 'slurm', '--no-notebooks')
    assert f'{len(grid)} finished, 0 already queued, 0 submitted.' in again.stdout
    status = ltvit_paper('--preset', 'tiny', '--runs', str(root), '--status')
    assert 'COMPLETED' in status.stdout and ' job ' in status.stdout.splitlines()[1]
