"""The Slurm launcher against a real one-node Slurm started by the tests (`slurm_cluster`): a run queued or running
is not submitted twice, `scancel` then resubmission resumes the run from its checkpoint, Slurm's requeue signal
stops, requeues and resumes a job, and a failed run cancels the runs after it instead of leaving them pending.
The tiny grid through Slurm against the local launcher is in test_paper.py (it reuses that module's grid)."""
import subprocess
import time
from pathlib import Path

import pytest

from ltvit.grid import Grid, GridFailed, Run
from ltvit.slurm import LIVE, SlurmOptions, job_states, last_job, slurm_status, submit_grid

pytestmark = pytest.mark.slow  # starts Slurm and trains through it

CPU = SlurmOptions(gpus=0, cpus=1, time='20:00')


def _long_grid(root: Path) -> Grid:
    "One training run of 40 tiny epochs (about 10 s), checkpointed every epoch."
    params = dict(dataset='synthetic', synthetic_patients=60, img_size=32, model='ltvit_tiny_patch16_224',
                  model_args='embed_dim:48,depth:2,num_heads:2,patch_size:8', n2=1, epochs=40, batch_size=16,
                  warmup_epochs=1.0, n_boot=10, data_dir=str(root / 'synthetic'))
    return Grid('test', [Run('long', params)])


def _until(cond, timeout: float = 300, what: str = ''):
    t = time.time()
    while not cond():
        assert time.time() - t < timeout, f'timed out waiting for {what}'
        time.sleep(0.5)


def _checkpointed(g: Grid, root: Path, jid: str):
    "Wait until the run has written a checkpoint while its job still runs."
    def ok():
        assert job_states([jid])[jid] in LIVE, f'job {jid} ended before its first checkpoint'
        return (g.folder('long', root) / 'checkpoints' / 'last.json').is_file()
    _until(ok, what='a checkpoint')


def test_queued_run_is_not_submitted_twice_and_scancel_then_resubmit_resumes(slurm_cluster, tmp_path):
    g, root = None, tmp_path / 'grid'
    g = _long_grid(root)
    logs = []
    submit_grid(g, root, CPU, wait=False, log=logs.append)
    jid = last_job(g.folder('long', root))['job_id']
    submit_grid(g, root, CPU, wait=False, log=logs.append)  # queued or running: left alone
    assert '1 runs, 0 finished, 1 already queued, 0 submitted.' in logs[-1], logs
    names = subprocess.run(['squeue', '--noheader', '--format=%j'], capture_output=True, text=True).stdout.split()
    assert names.count(f'ltvit-{g.id("long")}') == 1
    st = slurm_status(g, root).set_index('name')
    assert st.at['long', 'job'] == jid and st.at['long', 'slurm'] in LIVE
    _checkpointed(g, root, jid)
    subprocess.run(['scancel', jid], check=True)
    _until(lambda: job_states([jid])[jid] not in LIVE, what='the cancellation')
    st = slurm_status(g, root).set_index('name')
    assert st.at['long', 'status'] == 'broken' and st.at['long', 'slurm'] == 'CANCELLED'
    logs = []
    st = submit_grid(g, root, CPU, poll_s=1, log=logs.append).set_index('name')
    assert st.at['long', 'status'] == 'finished' and any(l.startswith('  resubmit   long') for l in logs), logs
    rec = (g.folder('long', root) / 'slurm.json').read_text()
    assert rec.count('"job_id"') == 2 and '"resume": true' in rec
    assert 'Resuming' in (g.folder('long', root) / 'log.txt').read_text()  # from its checkpoint, not from scratch


def test_requeue_signal_stops_requeues_and_resumes_the_same_job(slurm_cluster, tmp_path):
    "USR1 (what --signal sends before the time limit, and what pre-emption sends) requeues the job; it resumes."
    root = tmp_path / 'grid'
    g = _long_grid(root)
    submit_grid(g, root, CPU, wait=False, log=lambda s: None)
    jid = last_job(g.folder('long', root))['job_id']
    _checkpointed(g, root, jid)
    subprocess.run(['scancel', '--signal=USR1', '--batch', jid], check=True)
    _until(lambda: job_states([jid])[jid] not in LIVE, timeout=600, what='the requeued job to finish')
    show = subprocess.run(['scontrol', 'show', 'job', jid], capture_output=True, text=True).stdout
    assert 'JobState=COMPLETED' in show and 'Restarts=1' in show, show
    log = (g.folder('long', root) / 'log.txt').read_text()
    assert 'USR1: stopping and requeueing' in log and '(restart 1)' in log
    assert 'Resuming' in log.split('(restart 1)')[1]
    assert (g.folder('long', root) / 'metrics.json').is_file()


def test_a_failed_run_cancels_the_runs_after_it(slurm_cluster, tmp_path):
    root = tmp_path / 'grid'
    g = Grid('test', [Run('bad', {'n_patients': 3}, 'task', 'ltvit.grid:no_such_task'),
                      Run('after', {'n_patients': 3}, 'task', 'ltvit.grid:example_task', after=['bad'])])
    with pytest.raises(GridFailed, match='2 run.s. did not finish'):
        submit_grid(g, root, CPU, poll_s=1, log=lambda s: None)
    st = slurm_status(g, root).set_index('name')
    assert st.at['bad', 'slurm'] == 'FAILED' and st.at['after', 'slurm'] == 'CANCELLED'
    assert 'no_such_task' in (g.folder('bad', root) / 'log.txt').read_text()
    assert job_states(['999999', st.at['bad', 'job']]) == {'999999': 'GONE', st.at['bad', 'job']: 'FAILED'}  # long gone
