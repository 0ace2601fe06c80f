r"""workers.py: worker processes that can be killed: a job that overruns its timeout is killed
and replaced, and no worker outlives the process that started it.

    from workers import Pool
    pool = Pool("verify", "_worker_judge", folder=HERE, stats=STATS, name="verify")
    w = pool.take()                                   # an idle worker, or a new one
    answer, failure, w = pool.ask(w, job, timeout)    # job: one line of JSON text
    pool.give(w)                                      # back to the idle list for the next caller
    pool.shutdown()                                   # stop the idle workers

A worker is `python -c "import workers; workers.serve(module, function, parent=PID)"`, with
`folder` and this file's folder first on sys.path. serve() imports `module` and calls
`module.function()` once, before the worker says "ready", so that the handler's setup (verify's
imports sympy) is no part of any job's timeout; what that call returns answers each job line
read from stdin with one JSON value, written as one line to stdout. So this file knows nothing
of what the jobs mean, and imports nothing of ours: the handler's module is imported only in
the worker process, by name.

What it guarantees:
- A job past its timeout: select() on the worker's stdout pipe (any thread may wait; no
  signals), then the worker is killed and replaced, and stats["timeout"] counts it.
- A worker that dies (EOF, a broken pipe, a line that is not JSON) is replaced and the job
  tried once more; stats["worker_died"] counts each death.
- A worker dies with the process that started it, even mid-job: Linux's PR_SET_PDEATHSIG,
  elsewhere a thread that watches getppid(). PDEATHSIG follows the *thread* that started the
  child, so every worker is started by one spawner thread that lives as long as the process.
- A forked child (a DataLoader worker, say) forgets its parent's idle workers, spawner thread
  and locks, and starts its own workers.

Left out: Windows (select() on pipes), sharing a worker between two jobs at once, and catching
a handler's exceptions: a handler that raises ends its worker, which the caller sees as a
death (verify's handler catches everything itself).
"""
import importlib
import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import Counter

_HERE = os.path.dirname(os.path.abspath(__file__))
_MOD = os.path.basename(__file__).rsplit(".", 1)[0]


# ---------------------------------------------------------------------------- the worker process

def _set_pdeathsig() -> bool:
    """prctl(PR_SET_PDEATHSIG, SIGKILL) through libc: the kernel kills this process when the
    thread that started it ends. False where there is no prctl (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0   # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):   # no libc to load, or a libc without prctl
        return False


def _watch_parent(parent: int) -> None:
    """The portable fallback, run in a daemon thread: exit once this process is orphaned (it is
    then reparented, so getppid() changes). Python switches threads every 5 ms, so this runs
    even while the main thread is inside a long job (a sympy call)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _die_with_parent(parent: int) -> None:
    """Make this worker end with the process that started it, even in the middle of a job. Its
    stdin EOF is only read between jobs, so a killed trainer otherwise leaves its graders
    computing until their current job is done."""
    if not _set_pdeathsig():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:   # the parent died before the kernel was asked to watch it
        os._exit(1)


def serve(module: str, function: str, parent: int | None = None) -> None:
    """Worker main: `module.function()` gives the handler; each line on stdin is answered with
    handler(line) as one JSON line on stdout. `parent` is the pid of the process that started
    it: the worker dies with it."""
    if parent is not None:
        _die_with_parent(parent)
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)   # stray prints go to stderr, never into the protocol
    # the handler's setup runs before "ready", so that no job's timeout pays for it
    handle = getattr(importlib.import_module(module), function)()
    out.write('"ready"\n')
    out.flush()
    for line in sys.stdin:
        out.write(json.dumps(handle(line)) + "\n")
        out.flush()


# ---------------------------------------------------------------------------- starting workers

class _Spawner:
    """Starts the worker processes from one thread that lives as long as this process. Linux's
    PR_SET_PDEATHSIG fires when the *thread* that started a child ends, not the process: a
    worker started by one of grade_batch's threads would be killed when that batch is done,
    though the pool means to keep it for the next one."""

    def __init__(self):
        self.pid = os.getpid()   # a forked child has no copy of the thread: it needs its own
        self.requests = queue.SimpleQueue()
        threading.Thread(target=self._run, daemon=True, name="worker-spawner").start()

    def _run(self) -> None:
        while True:
            argv, reply = self.requests.get()
            try:   # no terminal signals (own session); the worker exits on stdin EOF
                reply.put(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           start_new_session=True))
            except Exception as e:   # raised again in the caller's thread; this thread must live on
                reply.put(e)

    def popen(self, argv: list) -> subprocess.Popen:
        """Popen(argv) on pipes, run by the spawner thread; the caller waits for it."""
        reply = queue.SimpleQueue()
        self.requests.put((argv, reply))
        p = reply.get()
        if isinstance(p, Exception):
            raise p
        return p


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _spawn(argv: list) -> subprocess.Popen:
    """Start a worker process through this process's spawner thread (made on first use)."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner.pid != os.getpid():
            _spawner = _Spawner()
    return _spawner.popen(argv)


class Worker:
    """One worker process on pipes, running module.function's handler. Timeouts are select() on
    its stdout, so any thread may wait."""

    def __init__(self, module: str, function: str, folder: str):
        folders = list(dict.fromkeys([_HERE, folder]))   # this file's folder first: this module
        code = "\n".join([
            "import sys",
            f"sys.path[:0] = {folders!r}",
            f"import {_MOD}",
            f"{_MOD}.serve({module!r}, {function!r}, parent={os.getpid()})"])
        self.p = _spawn([sys.executable, "-c", code])
        self.buf = b""
        self.ready = False

    def _line(self, timeout: float) -> bytes:
        """The next line the worker writes, waiting at most timeout seconds."""
        end = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("worker exited")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def ask(self, job: str, timeout: float):
        """Send one job line and wait at most timeout seconds for its answer."""
        if not self.ready:   # startup is not part of the job's timeout
            self._line(120.0)
            self.ready = True
        self.p.stdin.write(job.encode() + b"\n")
        self.p.stdin.flush()
        return json.loads(self._line(timeout))

    def kill(self) -> None:
        """End the process; a worker that is already gone is fine."""
        try:
            self.p.kill()
            self.p.wait(5)
            self.p.stdin.close()
            self.p.stdout.close()
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass


# ---------------------------------------------------------------------------- the pool

class Pool:
    """Idle workers that all run one handler, shared by every thread of this process. `stats`
    counts timeouts and deaths, and log lines start with `name`."""

    def __init__(self, module: str, function: str, folder: str, stats: Counter, name: str):
        self.handler = (module, function, folder)   # what each worker runs, and from where
        self.stats = stats
        self.name = name
        self.log = logging.getLogger(name)
        self.idle: list = []   # workers not in use
        self.lock = threading.Lock()
        _pools.add(self)

    def new(self) -> Worker:
        """A new worker process running this pool's handler."""
        return Worker(*self.handler)

    def take(self) -> Worker:
        """An idle worker, or a new one."""
        with self.lock:
            return self.idle.pop() if self.idle else self.new()

    def give(self, w: Worker) -> None:
        """Put w back for the next caller, if it is still alive."""
        if w.p.poll() is None:
            with self.lock:
                self.idle.append(w)

    def shutdown(self) -> None:
        """Stop the idle workers (they also exit by themselves when this process ends)."""
        with self.lock:
            for w in self.idle:
                w.kill()
            self.idle.clear()

    def ask(self, w: Worker, job: str, timeout: float) -> tuple:
        """Run one job line on w: (answer, failure, worker to use next). answer is the handler's
        reply, or None when failure says why there is none: a timeout (the worker is killed and
        replaced), or a worker that died twice (each replaced; one retry)."""
        for _attempt in range(2):
            try:
                return w.ask(job, timeout), None, w
            except TimeoutError:   # before OSError, of which it is a subclass
                self.stats["timeout"] += 1
                self.log.warning("%s: timeout after %.1fs on %.200s", self.name, timeout, job)
                w.kill()
                return None, f"timeout after {timeout}s", self.new()
            except (EOFError, OSError, ValueError) as e:   # a killed worker: replace it, retry once
                self.stats["worker_died"] += 1
                self.log.warning("%s: worker died (%s); replacing it", self.name, e)
                w.kill()
                w = self.new()
        return None, "worker died twice", w

    def forget(self) -> None:
        """In a forked child: drop the parent's idle workers (not killed: they are still the
        parent's) and a lock that another parent thread may have held at the fork."""
        self.idle.clear()
        self.lock = threading.Lock()


_pools: weakref.WeakSet = weakref.WeakSet()   # every Pool of this process, for the fork hook


def _forget_parents_workers() -> None:
    """In a forked child: the parent's idle workers and spawner thread are the parent's (their
    pipes are shared, so two processes could read one answer), and a lock held at the fork by
    another parent thread would stay held. Start afresh; the workers are not killed, they are
    still the parent's."""
    global _spawner, _spawner_lock
    for pool in list(_pools):
        pool.forget()
    _spawner = None
    _spawner_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents_workers)
