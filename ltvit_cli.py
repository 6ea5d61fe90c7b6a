"""The command-line entry points of ltvit, kept out of the `ltvit` package so that `--help` answers at once.

`import ltvit` loads PyTorch and timm (several seconds). The console scripts come here instead: `-h`/`--help` is
answered from the help text that the library's own parsers wrote (`ltvit/_cli_help.json`, generated like nbdev's
`_modidx.py`: `python -m ltvit_cli --write`; `./dev check` and the tests compare it with the parsers), anything else
imports the command and runs it. A `ltvit.core.UsageError` (a data folder that is not there, pre-trained weights
that cannot be fetched offline) is printed as one line, exit status 2, without a traceback.

The module also registers with papermill (its `papermill.engine` entry-point group, which papermill loads when it
starts): the engine named `ltvit` is papermill's own `nbclient` engine, and loading it makes papermill report a
notebook's `UsageError` the same way, as one line and exit status 1 instead of a traceback of papermill's own
frames. Every other error is reported by papermill as before. `./dev lab` serves the notebooks through
`LabContents`, so that opening one in JupyterLab leaves it unmodified. This is the one module not exported from a
notebook."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

COMMANDS = {  # console script: (module, the function that runs it with argv, the function that returns its parser)
    'ltvit_cache': ('ltvit.cache', 'cache_cli', '_parser'),
    'ltvit_train': ('ltvit.train', 'main', '_parser'),
    'ltvit_paper': ('ltvit.experiments', 'main', '_parser'),
    'ltvit_predict': ('ltvit.predict', 'main', '_parser'),
    'ltvit_export': ('ltvit.predict', 'export_main', '_export_parser'),
}
USAGE_ERRORS = ('UsageError', 'DataError', 'ParameterError')  # ltvit.core.UsageError and its subclasses (a test keeps this complete)
HELP_FILE = '_cli_help.json'
HELP_COLUMNS = 100  # the width the stored help is formatted at


def _help_path() -> Path:
    spec = importlib.util.find_spec('ltvit')  # finds the package without importing it
    return Path(spec.origin).parent / HELP_FILE


def _wants_help(argv: list[str]) -> bool:
    args = argv[:argv.index('--')] if '--' in argv else argv
    return any(a in ('-h', '--help') for a in args)


def run(prog: str, argv: list[str] | None = None) -> int:
    "Run console script `prog` with `argv` (default: the command line's): its exit status."
    argv = sys.argv[1:] if argv is None else list(argv)
    if _wants_help(argv):
        try: text = json.loads(_help_path().read_text())[prog]
        except (OSError, ValueError, KeyError): pass  # no stored help: the parser answers, after the imports
        else: print(text, end=''); return 0
    module, func, _ = COMMANDS[prog]
    try: status = getattr(importlib.import_module(module), func)(argv)
    except Exception as e:
        if type(e).__name__ not in USAGE_ERRORS: raise
        print(f'{prog}: {e}', file=sys.stderr); return 2
    return status if isinstance(status, int) else 0


def cache() -> int: return run('ltvit_cache')
def train() -> int: return run('ltvit_train')
def paper() -> int: return run('ltvit_paper')
def predict() -> int: return run('ltvit_predict')
def export() -> int: return run('ltvit_export')


def help_texts() -> dict[str, str]:
    "The help of every command, from the library's parsers (imports the library)."
    old = os.environ.get('COLUMNS')
    os.environ['COLUMNS'] = str(HELP_COLUMNS)
    try:
        return {prog: getattr(importlib.import_module(m), parser)().format_help()
                for prog, (m, _, parser) in COMMANDS.items()}
    finally:
        if old is None: del os.environ['COLUMNS']
        else: os.environ['COLUMNS'] = old


def _brief_usage_errors(error) -> bool:
    "Print papermill's error for a notebook's `UsageError` as one line; False for any other error."
    if getattr(error, 'ename', None) not in USAGE_ERRORS: return False
    print(f'papermill: the notebook stopped at cell In [{error.exec_count}]: {error.ename}: {error.evalue}',
          file=sys.stderr)
    return True


def _papermill_engine():
    from papermill.engines import NBClientEngine  # papermill is loading its entry points: it is being imported
    previous = sys.excepthook
    def hook(kind, error, tb):
        if not _brief_usage_errors(error): previous(kind, error, tb)
    sys.excepthook = hook
    return NBClientEngine


def _lab_contents():
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager

    class LabContents(AsyncLargeFileManager):
        """Jupyter's file manager, serving a python3 notebook with the kernel metadata its kernel will report (nbdev_clean
        stores it without; papermill with another machine's), so that opening it in Lab changes nothing. nbdev's save
        hook strips that metadata again before a notebook is written."""
        async def get(self, path, content=True, type=None, format=None, **kw):
            model = await super().get(path, content=content, type=type, format=format, **kw)
            nb = model.get('content') if model.get('type') == 'notebook' else None
            if nb and (nb.metadata.get('kernelspec') or {}).get('name') == 'python3':
                spec = KernelSpecManager().get_kernel_spec('python3')
                nb.metadata['kernelspec'] = {'display_name': spec.display_name, 'language': spec.language, 'name': 'python3'}
                nb.metadata['language_info'] = dict(IPythonKernel.language_info)
            return model
    return LabContents


def __getattr__(name: str):  # built when a host asks, so the console scripts import neither papermill nor Jupyter
    if name == 'PapermillEngine': return _papermill_engine()
    if name == 'LabContents': return _lab_contents()
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> int:
    "`python -m ltvit_cli --write` stores the commands' help; `--check` says whether the stored help is current."
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (['--write'], ['--check']):
        print('usage: python -m ltvit_cli --write | --check', file=sys.stderr); return 2
    texts, path = help_texts(), _help_path()
    if argv == ['--write']:
        path.write_text(json.dumps(texts, indent=1, sort_keys=True) + '\n'); print(f'wrote {path}'); return 0
    stored = json.loads(path.read_text()) if path.is_file() else None
    if stored == texts: print('stored command help is current'); return 0
    print(f'{path} differs from the commands\' parsers: run python -m ltvit_cli --write and commit', file=sys.stderr)
    return 1


if __name__ == '__main__': sys.exit(main())
