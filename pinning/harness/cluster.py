"""``--cluster ADDRESS|local:N``: cells on the workers of a dask.distributed cluster.

A *cell* is the unit that never splits across machines: for ``pinbench run`` one
benchmark with all its pyperf worker processes (:func:`pinning.harness.runner.run_cell`),
for ``compare-branches`` the A/B pair of one benchmark with its interleaved rounds. Each
runs whole on one dask worker, so a benchmark's measured values never mix hosts. dask
does the placement, the work stealing and the recovery; this module only says what a
cell needs and watches it:

* **Resources.** A cell asks for ``cell=1`` (a worker declares ``cell=1``, so it runs one
  cell at a time and timings do not compete), ``memory_gib`` (the preflight estimate of
  the benchmark: :meth:`Backing.bytes_needed <pinning.harness.backings.Backing.bytes_needed>`),
  ``kvm=1`` for a kvm benchmark (only workers on a host with /dev/kvm declare it), and the
  *canary token* below. ``local:N`` starts N single-threaded workers here, each declaring
  ``cell=1``, its 1/N share of the usable memory and ``kvm=1`` where /dev/kvm works.
* **Determinism canary.** Before a worker gets a cell it runs a small reference
  lifecycle of every strategy (:func:`canary_counts`); only if its modelled counts equal
  the client's is it given the token resource every cell asks for. A worker whose counts
  differ (another pinbench, numba or numpy) is refused by name with the differing
  counters; a worker that joins later is checked the same way.
* **Keys.** Every cell is submitted with a key of its own (``pure=False``): an A/A pair's
  identical halves, or the same benchmark twice, are never merged by dask's key hashing.
* **A lost worker.** The scheduler re-runs a cell whose worker died. The cell counts its
  own starts (a dask Variable per cell, :func:`_cell_task`) and a third start runs
  nothing, so a cell is retried once, elsewhere, whatever the scheduler's
  ``allowed-failures`` (whose count also grows for cells only queued on a lost worker).
  Only a finished attempt's result is taken: a cell is never counted twice. The bench
  script, and pyperf's worker processes under it, die with the dask worker
  (:func:`pinning.harness.bench.die_with_starter`).
* **Nothing waits forever.** A worker's canary has CANARY_TIMEOUT_S; a cell no live
  worker can take (its one fitting worker left) fails after UNPLACEABLE_S; a lost
  connection to the scheduler fails the cells not yet back, and the caller keeps the
  finished ones (``pinbench run`` writes them to its partial file).

dask is an optional extra (``pip install -e '.[dask]'``); without it ``--cluster`` is one
line and exit status 2.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinning.harness.backings import TABLE
from pinning.harness.runner import CellResult, cell_outcome, run_cell
from pinning.harness.suite import Suite
from pinning.model.config import BenchConfig
from pinning.model.names import InputError

INSTALL = "pip install -e '.[dask]'"
#: The resources a cell asks for (besides the canary token).
CELL, MEMORY, KVM = "cell", "memory_gib", "kvm"
#: The topic on which a cell says it started (worker, pid), for progress and retries.
TOPIC = "pinbench-cell"
#: Starts a cell may have: the first and one retry after its worker was lost.
MAX_STARTS = 2
#: How a worker is told to start, in every message that asks for one.
WORKER_HINT = ("dask worker ADDRESS --nthreads 1 --resources 'cell=1 memory_gib=GIB' "
               "(add kvm=1 on a host with /dev/kvm)")
#: Seconds to wait for a scheduler to answer, and for its first worker.
CONNECT_TIMEOUT_S = 10
#: Seconds a worker's canary may take (a few on a free worker; a cold numba cache, more).
CANARY_TIMEOUT_S = 180
#: Seconds a cell may wait while no live worker could take it, before it fails.
UNPLACEABLE_S = 60
#: Seconds between the tables of the workers on a long run.
TABLE_EVERY_S = 30
#: The canary's guest: small enough to take a moment, large enough to fault, pin,
#: prefetch and tear down on every strategy.
CANARY_GUEST = 64 << 20


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message``: an error as one line of a progress report."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _distributed():
    """dask.distributed, or the one line that says how to install it."""
    try:
        import distributed
    except ImportError:
        raise InputError(f"--cluster needs dask.distributed, which is not installed: "
                         f"{INSTALL}") from None
    return distributed


# -- the determinism canary ----------------------------------------------------------------

def canary_configs() -> list[BenchConfig]:
    """The reference lifecycles of the canary: every strategy, one small random guest."""
    from pinning.model import strategies

    return [BenchConfig(workload="lifecycle", strategy=name, guest_size=CANARY_GUEST,
                        pattern="random", vcpus=2) for name in strategies.names()]


def canary_counts() -> dict[str, dict[str, int]]:
    """The modelled counters of :func:`canary_configs`, by strategy: what a worker must
    reproduce exactly to be given cells."""
    from pinning.model.costs import load_profile
    from pinning.model.lifecycle import run_lifecycle

    profile = load_profile()
    return {c.strategy: {k: int(v) for k, v in run_lifecycle(c, profile).counters().items()}
            for c in canary_configs()}


def canary_differences(expected: dict[str, dict[str, int]],
                       got: dict[str, dict[str, int]]) -> list[str]:
    """Each counter that differs, as ``strategy counter worker != client``."""
    out = []
    for strategy in sorted({*expected, *got}):
        want, have = expected.get(strategy, {}), got.get(strategy, {})
        for key in sorted({*want, *have}):
            if want.get(key) != have.get(key):
                out.append(f"{strategy} {key} {have.get(key, 'missing')} != "
                           f"{want.get(key, 'missing')}")
    return out


def canary_token(expected: dict[str, dict[str, int]]) -> str:
    """The resource a worker is given once its counts match ``expected``."""
    digest = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()
    return f"pinbench-canary-{digest[:12]}"


def _canary_task() -> dict[str, Any]:
    """On a worker: its canary counts (looked up at call time, so a test may forge them)."""
    return sys.modules[__name__].canary_counts()


async def _set_token(token: str, amount: float, dask_worker=None) -> None:
    """On a worker: give it the canary token (1) or take it back (0)."""
    await dask_worker.set_resources(**{token: amount})


# -- one cell on a worker -------------------------------------------------------------------

def dask_setup(worker: Any) -> None:
    """dask's preload hook, in each ``local:N`` worker process: ignore SIGINT.

    A terminal's Ctrl-C reaches every process of its group, the workers too, which
    would each die with a traceback; the client alone handles it (it keeps the finished
    cells, then closes the cluster, and a running bench script dies with its worker).
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


# -- one cell on a worker -------------------------------------------------------------------

class TooManyStarts(Exception):
    """A cell whose worker was lost mid-cell MAX_STARTS times: it does not run again."""

    def __init__(self, starts: int) -> None:
        super().__init__(f"started {starts} times")
        self.starts = starts


def _cell_task(cell_id: str, fn: Callable[..., Any], *args: Any) -> tuple[int, Any]:
    """On a worker: count this start of the cell (a dask Variable the client set to 0;
    a start past MAX_STARTS runs nothing), say it started (for progress), then run
    ``fn(worker_name, workdir, *args)``; (the starts so far, its result).

    The count lives with the cell, not in the scheduler's failure count, which also
    grows for cells that were only queued on a lost worker. Two starts of one cell are
    never concurrent (a retry begins after its worker was declared dead), so get-then-set
    needs no lock.
    """
    distributed = _distributed()
    worker = distributed.get_worker()
    starts = distributed.Variable(cell_id)
    start = int(starts.get(timeout=30)) + 1
    starts.set(start)
    if start > MAX_STARTS:
        raise TooManyStarts(start)
    name = str(worker.name)
    # the scheduler adds the worker's address to the message as "worker"
    worker.log_event(TOPIC, {"id": cell_id, "name": name, "pid": os.getpid(), "start": start})
    return start, fn(name, Path(worker.local_directory), *args)


#: What a dask nanny puts in its worker's environment (``distributed.nanny.pre-spawn-
#: environ``): a bench script must not inherit them. MALLOC_TRIM_THRESHOLD_ changes when
#: glibc returns memory to the kernel, i.e. the munmap and page faults a real backing
#: measures; the thread caps change what numpy's libraries do.
NANNY_ENV = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "OPENBLAS_NUM_THREADS")


def _bench_cell(worker: str, workdir: Path, config: BenchConfig, suite: Suite,
                cost_profile: str | None) -> CellResult:
    """A ``pinbench run`` cell: one benchmark (:func:`pinning.harness.runner.run_cell`),
    in the environment the worker was started with, less what its nanny added."""
    for key in NANNY_ENV:
        os.environ.pop(key, None)
    return run_cell(config, suite, cost_profile, workdir, worker=worker)


# -- the cluster ----------------------------------------------------------------------------

def parse_spec(spec: str) -> tuple[str, int | str]:
    """``local:N`` -> ("local", N); anything else -> ("address", spec).

    ``local:N`` is at most the number of CPUs: one cell per worker at a time, and more
    cells than CPUs would only time each other.
    """
    shown = spec if spec.isprintable() and spec.strip() == spec and spec else repr(spec)
    if spec.startswith("local:"):
        text = spec.removeprefix("local:")
        cpus = os.cpu_count() or 1
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= cpus:
            raise InputError(f"--cluster {shown}: local:N needs a whole number of workers "
                             f"from 1 to this machine's {cpus} CPUs, e.g. local:{cpus}")
        return "local", int(text)
    if shown != spec or " " in spec:
        raise InputError(f"--cluster {shown}: expected a scheduler address "
                         "(tcp://HOST:PORT) or local:N")
    return "address", spec


def local_resources(n_workers: int) -> dict[str, float]:
    """What each of ``local:N``'s workers declares: one cell at a time, a 1/N share of the
    memory a run may use here (two cells at once must both fit), kvm where it works."""
    from pinning.backends.hostmem import usable_memory

    usable, _ = usable_memory()
    res = {CELL: 1.0, MEMORY: math.floor(usable / n_workers / (1 << 30) * 100) / 100}
    if TABLE["kvm"].unavailable() is None:
        res[KVM] = 1.0
    return res


def cell_resources(config: BenchConfig) -> dict[str, float]:
    """What a benchmark's cell asks of its worker (without the canary token)."""
    need = TABLE[config.backing].bytes_needed(config)
    res = {CELL: 1.0, MEMORY: math.ceil(need / (1 << 30) * 100) / 100}
    if config.backing == "kvm":
        res[KVM] = 1.0
    return res


@dataclass
class Job:
    """One cell to run: its name, what runs it on the worker, what it needs."""

    name: str
    fn: Callable[..., Any]
    args: tuple
    resources: dict[str, float]
    #: what a skipped or failed cell gives back: (name, status, why) -> result
    fallback: Callable[[str, str, str], Any]
    #: its estimated seconds: dask starts the longest first (a long cell started last
    #: would leave the other workers idle at the end)
    estimate_s: float = 0.0


@dataclass
class Outcome:
    """A finished cell: its result (or the fallback's), where it ran, how many starts."""

    job: Job
    result: Any
    worker: str
    attempts: int


@dataclass
class _Worker:
    name: str
    resources: dict[str, float]
    state: str = "checking"  # checking, accepted, refused, unusable, gone
    since: float = 0.0  # when its canary was submitted
    done: int = 0
    busy_s: float = 0.0
    running: str = ""


@dataclass
class _Watch:
    """What the client knows of the cells: starts reported by the workers."""

    # the handler runs on the client's event-loop thread: a queue hands events over
    events: queue.Queue = field(default_factory=queue.Queue)

    def __call__(self, event: tuple[float, dict]) -> None:  # the client's event thread
        self.events.put(event[1])


class ClusterRun:
    """A connection to a cluster (a LocalCluster of our own for ``local:N``), its canary
    bookkeeping and its progress lines; a context manager that closes what it opened."""

    def __init__(self, spec: str, stream=None,
                 describe: Callable[[Job, Any], str] = lambda job, result: str(result)
                 ) -> None:
        self.spec = spec
        self.describe = describe  # a finished cell's outcome, for its progress line
        self.stream = stream or sys.stderr
        self.cluster = None
        self.client = None
        self.workers: dict[str, _Worker] = {}  # address -> worker
        self.expected: dict[str, dict[str, int]] = {}
        self.token = ""
        self._canaries: dict[str, Any] = {}  # address -> future
        self._watch = _Watch()
        self._last_scan = 0.0
        self._scratch: str | None = None  # local:N's workers' directory, removed at close

    # -- setup --------------------------------------------------------------------------
    def __enter__(self) -> ClusterRun:
        try:
            self._open()
        except BaseException:  # a refusal, or Ctrl-C during the canary: leave nothing up
            self.close()
            raise
        return self

    def _open(self) -> None:
        """Connect (or start ``local:N``), then check every worker with the canary."""
        distributed = _distributed()
        kind, value = parse_spec(self.spec)
        logging.getLogger("distributed").setLevel(logging.ERROR)
        try:
            if kind == "local":
                import dask

                self._scratch = tempfile.mkdtemp(prefix="pinbench-dask-")
                # The scratch space (spill, locks) in a directory of its own, removed at
                # close. (The retry limit is the cells' own: _cell_task.)
                with dask.config.set({"temporary-directory": self._scratch}):
                    self.cluster = distributed.LocalCluster(
                        n_workers=int(value), threads_per_worker=1, processes=True,
                        resources=local_resources(int(value)), dashboard_address=":0",
                        local_directory=self._scratch, silence_logs=logging.ERROR,
                        preload=[__name__])  # dask_setup: Ctrl-C is the client's
                self.client = distributed.Client(self.cluster)
            else:
                self.client = distributed.Client(str(value), timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError, ValueError, TypeError, RuntimeError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if isinstance(exc, ValueError | TypeError) and kind != "local":
                raise InputError(f"--cluster {self.spec}: not a scheduler address ({why}); "
                                 "expected tcp://HOST:PORT or local:N") from None
            if kind == "local":
                raise InputError(f"--cluster {self.spec}: the local workers did not start "
                                 f"({why})") from None
            raise InputError(f"--cluster {self.spec}: no dask scheduler answered ({why}); "
                             "start one with `dask scheduler`, or use --cluster local:N") \
                from None
        self.client.subscribe_topic(TOPIC, self._watch)
        try:
            self.client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except (TimeoutError, OSError):
            raise InputError(f"--cluster {self.spec}: the scheduler has no worker after "
                             f"{CONNECT_TIMEOUT_S} s; start one with {WORKER_HINT}") from None
        link = self.client.dashboard_link
        self.say(f"dask cluster {self.spec}: dashboard {link}" if link else
                 f"dask cluster {self.spec}: no dashboard (pip install bokeh for one)")
        if kind == "local" and int(value) > 1:
            self.say(f"note: the {value} workers share this machine's CPUs, caches and memory "
                     "bandwidth: each cell's measured (and simulator-speed) times include "
                     "the cells running beside it; modelled values do not change")
        self.expected = canary_counts()
        self.token = canary_token(self.expected)
        self._scan(wait=True)
        if not any(w.state == "accepted" for w in self.workers.values()):
            states = "; ".join(f"{w.name}: {w.state}" for w in self.workers.values())
            raise InputError(f"--cluster {self.spec}: no worker can take cells ({states}); "
                             f"start one with {WORKER_HINT}")

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and the cluster we started (never a cluster of one's own)."""
        for thing in (self.client, self.cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # closing after a lost scheduler: nothing left to close
                    pass
        self.client = self.cluster = None
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    # -- workers and the canary -----------------------------------------------------------
    def _scan(self, wait: bool = False) -> None:
        """Find new workers and run the canary on each; mark departed ones gone; grant the
        token to a worker whose canary matched, refuse one whose did not. ``wait``: wait
        (at most CANARY_TIMEOUT_S) for the canaries of the workers found."""
        self._last_scan = time.monotonic()
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        for addr, worker in self.workers.items():
            if addr not in info and worker.state != "gone":
                worker.state, worker.running = "gone", ""
                fut = self._canaries.pop(addr, None)
                if fut is not None:
                    fut.cancel()
        for addr, w in info.items():
            if addr in self.workers:
                continue
            worker = _Worker(str(w.get("name", addr)), dict(w.get("resources") or {}))
            self.workers[addr] = worker
            lacking = [r for r in (CELL, MEMORY) if worker.resources.get(r, 0) <= 0]
            if lacking:
                worker.state = "unusable"
                self.say(f"worker {worker.name}: not used, it declares no "
                         f"{' or '.join(lacking)} resource (start it with {WORKER_HINT})")
                continue
            worker.since = time.monotonic()
            self._canaries[addr] = self.client.submit(
                _canary_task, key=f"pinbench-canary-{uuid.uuid4().hex}", pure=False,
                workers=[addr], allow_other_workers=False, resources={CELL: 1})
        if wait and self._canaries:
            deadline = time.monotonic() + CANARY_TIMEOUT_S
            while (time.monotonic() < deadline
                   and not all(f.done() for f in self._canaries.values())):
                time.sleep(0.1)
        for addr in list(self._canaries):
            fut = self._canaries[addr]
            worker = self.workers[addr]
            if not fut.done():
                if time.monotonic() - worker.since > CANARY_TIMEOUT_S:
                    fut.cancel()
                    del self._canaries[addr]
                    worker.state = "refused"
                    self.say(f"worker {worker.name} refused: its canary did not finish in "
                             f"{CANARY_TIMEOUT_S} s (busy with another client's work?)")
                continue
            del self._canaries[addr]
            self._judge(addr, worker, fut)

    def _judge(self, addr: str, worker: _Worker, fut: Any) -> None:
        """Accept (give the token to) or refuse a worker whose canary finished."""
        try:
            got = fut.result()
        except Exception as exc:
            worker.state = "refused"
            self.say(f"worker {worker.name} refused: its canary failed ({_first_line(exc)})")
            return
        diffs = canary_differences(self.expected, got)
        try:
            # A refused worker may hold the token from an earlier run, when its counts
            # still matched: take it back.
            self.client.run(_set_token, self.token, 0 if diffs else 1, workers=[addr])
        except Exception as exc:  # it left meanwhile
            worker.state = "gone"
            self.say(f"worker {worker.name}: lost before its canary was judged "
                     f"({_first_line(exc)})")
            return
        if diffs:
            worker.state = "refused"
            more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
            self.say(f"worker {worker.name} refused: its modelled counts differ from "
                     f"this machine's ({'; '.join(diffs[:3])}{more}; worker != client)")
            return
        worker.state = "accepted"
        self.say(f"worker {worker.name} accepted: its canary counts match "
                 f"({len(self.expected)} strategies)")

    def unmet(self, resources: dict[str, float]) -> str | None:
        """Why no live accepted worker could take a cell asking ``resources``; None if one
        can (a worker still being checked counts as one that may)."""
        live = [w for w in self.workers.values() if w.state in ("accepted", "checking")]
        if any(all(w.resources.get(k, 0) >= v for k, v in resources.items()) for w in live):
            return None
        if resources.get(KVM) and not any(w.resources.get(KVM) for w in live):
            return ("no accepted worker has /dev/kvm (start one on a KVM host with "
                    "--resources 'kvm=1 ...')")
        most = max((w.resources.get(MEMORY, 0) for w in live), default=0)
        share = " (local:N: each worker's share of this host)" if self.cluster else ""
        return (f"it needs {resources.get(MEMORY, 0):g} GiB and the largest accepted worker "
                f"offers memory_gib={most:g}{share}")

    # -- the cells ------------------------------------------------------------------------
    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Submit every job (those no worker could take are skipped at once) and yield
        each as it finishes, with the progress lines.

        A cell that no live worker can take for UNPLACEABLE_S (its only fitting worker
        left) fails with the reason; if the connection to the cluster is lost, every cell
        not yet back fails with that reason: the caller keeps what finished.
        """
        distributed = _distributed()
        total = len(jobs)
        futures: dict[str, tuple[Job, Any]] = {}
        where: dict[str, str] = {}
        running: dict[str, float] = {}
        stuck: dict[str, float] = {}  # cell id -> when it was first seen unplaceable
        done = 0

        def status() -> str:
            queued = len(futures) - len(running)
            return f"done {done}, running {len(running)}, queued {queued}"

        def line(job: Job, text: str, worker: str) -> None:
            self.say(f"[{done}/{total}] {job.name}" + (f" on {worker}" if worker else "")
                     + f": {text}  ({status()})")

        def give_up(job: Job, status: str, why: str) -> Outcome:
            """A cell that did not run (skipped) or will not finish (failed)."""
            nonlocal done
            done += 1
            line(job, f"{'skipped' if status == 'skipped' else 'FAILED'}: {why}", "")
            return Outcome(job, job.fallback(job.name, status, why), "", 0)

        for job in jobs:
            why = self.unmet(job.resources)
            if why:
                yield give_up(job, "skipped", why)
                continue
            cell_id = f"pinbench-cell-{uuid.uuid4().hex}"
            distributed.Variable(cell_id, client=self.client).set(0)  # its starts
            fut = self.client.submit(_cell_task, cell_id, job.fn, *job.args, key=cell_id,
                                     pure=False, resources={**job.resources, self.token: 1},
                                     priority=round(job.estimate_s * 1000))
            futures[cell_id] = (job, fut)
        last_table = time.monotonic()
        try:
            while futures:
                # Which are back, before the start events: a cell's start event may
                # arrive after its result, and must still be counted first.
                back = [cell_id for cell_id, (_, fut) in futures.items() if fut.done()]
                self._drain(futures, where, running)
                for cell_id in back:
                    job, fut = futures.pop(cell_id)
                    t0 = running.pop(cell_id, None)
                    self._finished(where.get(cell_id, ""), t0, job.name)
                    stuck.pop(cell_id, None)
                    worker = self._name(where.get(cell_id, ""))
                    result, attempts = self._result(job, fut, cell_id)
                    done += 1
                    line(job, self.describe(job, result), worker)
                    yield Outcome(job, result, worker, attempts)
                if time.monotonic() - self._last_scan > 2:
                    self._scan()
                    now = time.monotonic()
                    for cell_id, (job, fut) in list(futures.items()):
                        why = None if cell_id in running else self.unmet(job.resources)
                        if why is None:
                            stuck.pop(cell_id, None)
                        elif now - stuck.setdefault(cell_id, now) > UNPLACEABLE_S:
                            fut.cancel()
                            del futures[cell_id]
                            yield give_up(job, "failed", f"no live worker can take it for "
                                          f"{UNPLACEABLE_S} s: {why}")
                if time.monotonic() - last_table > TABLE_EVERY_S and futures:
                    last_table = time.monotonic()
                    self.say(self.worker_table())
                time.sleep(0.1)
        except (OSError, TimeoutError) as exc:
            # the scheduler went away: what finished stays finished
            why = f"the connection to the cluster was lost ({_first_line(exc)})"
            while futures:
                job, _ = futures.popitem()[1]
                yield give_up(job, "failed", why)
        finally:
            for _, fut in futures.values():
                fut.cancel()
        self.say(self.worker_table())

    def _drain(self, futures: dict, where: dict[str, str], running: dict[str, float]) -> None:
        """Take the start events the workers sent: who runs what; a restart's line."""
        while True:
            try:
                event = self._watch.events.get_nowait()
            except queue.Empty:
                return
            cell_id = event.get("id")
            if cell_id not in futures:
                continue
            job = futures[cell_id][0]
            previous = where.get(cell_id)
            where[cell_id] = event.get("worker", "")
            running[cell_id] = time.monotonic()
            if previous is not None:
                old = self.workers.get(previous)
                if old is not None and old.running == job.name:
                    old.running = ""
                self.say(f"{job.name}: worker {self._name(previous)} was lost mid-cell; "
                         f"started again on {event.get('name')} (start {event.get('start')} "
                         f"of at most {MAX_STARTS})")
            self._set_running(where[cell_id], job.name)

    def _result(self, job: Job, fut: Any, cell_id: str) -> tuple[Any, int]:
        """A finished cell's result (or the fallback's) and how many times it started."""
        distributed = _distributed()
        starts = 0
        try:
            starts, result = fut.result()
        except distributed.KilledWorker:
            result = job.fallback(job.name, "failed", "its worker was lost each time it "
                                  "ran (dask KilledWorker)")
        except TooManyStarts as exc:
            starts = exc.starts
            result = job.fallback(job.name, "failed", f"its worker was lost mid-cell "
                                  f"{MAX_STARTS} times; not run a third time")
        except distributed.client.FutureCancelledError as exc:  # not an Exception
            result = job.fallback(job.name, "failed", f"cancelled by the cluster "
                                  f"({_first_line(exc)}): was the connection lost?")
        except Exception as exc:
            result = job.fallback(job.name, "failed", _first_line(exc))
        try:
            var = distributed.Variable(cell_id, client=self.client)
            starts = starts or int(var.get(timeout=1))
            var.delete()
        except Exception:  # the scheduler went away: the count is what we had
            pass
        return result, max(starts, 1)

    def _name(self, address: str) -> str:
        """A worker's name (its address if it is not known)."""
        worker = self.workers.get(address)
        return worker.name if worker else address

    def _set_running(self, address: str, name: str) -> None:
        if address in self.workers:
            self.workers[address].running = name

    def _finished(self, address: str, t0: float | None, name: str) -> None:
        worker = self.workers.get(address)
        if worker is not None:
            worker.done += 1
            if worker.running == name:  # (its next cell may have started already)
                worker.running = ""
            if t0 is not None:
                worker.busy_s += time.monotonic() - t0

    def worker_table(self) -> str:
        """Per worker: its state, cells done, what it runs now, seconds busy."""
        rows = [f"  {w.name:<24} {w.state:<9} {w.done:>4} done  {w.busy_s:7.0f} s wall busy  "
                f"{'running ' + w.running if w.running else 'idle'}"
                for w in self.workers.values()]
        return "workers:\n" + "\n".join(rows)


# -- entry points -------------------------------------------------------------------------

def check_spec(spec: str) -> None:
    """Refuse a bad ``--cluster`` value, or a missing dask, before any work is set up."""
    _distributed()
    parse_spec(spec)


def run_jobs(spec: str, jobs: Sequence[Job], *, describe: Callable[[Job, Any], str],
             stream=None) -> Iterator[Outcome]:
    """Connect to the cluster ``spec``, run ``jobs`` on it, yield each as it finishes."""
    with ClusterRun(spec, stream, describe) as run:
        yield from run.run(jobs)


def run_cells(spec: str, todo: Sequence[BenchConfig], suite: Suite,
              cost_profile: str | None, stream=None) -> Iterator[CellResult]:
    """The cells of ``todo`` on the cluster ``spec``, yielded as they finish (the
    ``--cluster`` side of :func:`pinning.harness.runner.run_suite`)."""
    by_name = {c.name: c for c in todo}

    def fallback(name: str, status: str, why: str) -> CellResult:
        return CellResult(name, status, why)

    jobs = [Job(c.name, _bench_cell, (c, suite, cost_profile), cell_resources(c), fallback,
                suite.estimated_s(c)) for c in todo]
    describe = lambda job, cell: cell_outcome(cell, by_name[job.name])  # noqa: E731
    for outcome in run_jobs(spec, jobs, describe=describe, stream=stream):
        cell = outcome.result
        cell.attempts = outcome.attempts
        if outcome.worker and cell.worker == "local":
            cell.worker = outcome.worker
        yield cell


__all__ = ["ClusterRun", "Job", "Outcome", "canary_counts", "canary_differences",
           "cell_resources", "check_spec", "local_resources", "parse_spec", "run_cells",
           "run_jobs"]
