"""Fixtures shared by several test files."""
import contextlib
import io
import os
from types import SimpleNamespace

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP's barriers
    turned seconds of tests into minutes. Files opt in with pytestmark."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def train_cli():
    """train.py's command line, run in this process: train_cli(cwd, *args) -> .stdout, .stderr,
    .returncode, as a subprocess with OMP_NUM_THREADS=1 would give them, without the seconds each
    subprocess spends importing torch. A SystemExit with a message leaves it on .stderr, as the
    interpreter would print it."""
    import train

    def run(cwd, *args) -> SimpleNamespace:
        out, err, code = io.StringIO(), io.StringIO(), 0
        here, threads = os.getcwd(), torch.get_num_threads()
        os.chdir(cwd)
        torch.set_num_threads(1)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                train.main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if e.code is not None and not isinstance(e.code, int):
                err.write(f"{e.code}\n")
        finally:
            os.chdir(here)
            torch.set_num_threads(threads)
        return SimpleNamespace(stdout=out.getvalue(), stderr=err.getvalue(), returncode=code)
    return run
