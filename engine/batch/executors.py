"""Where a run's tasks execute: in this process, on a local cluster, or on an existing Dask scheduler.

:class:`InlineExecutor` and :class:`DaskExecutor` share one small interface (``submit``, ``map``,
``stream``), so the passes and the cohort reduction do not know which one runs them, and results
do not depend on it. :func:`progress` reports a pass: a bar on a terminal, a line at a steady
cadence otherwise (a nightly job's log).
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager

from tqdm import tqdm

from engine.errors import SarcoError

log = logging.getLogger("sarco")

# A pass reaches the scheduler in chunks of at least this many tasks, at most two chunks in flight:
# the scheduler's state for waiting tasks (~10 KB each) stays bounded whatever the cohort's size.
MIN_STREAM_CHUNK = 256
#: Seconds between two progress lines of a pass when stderr is not a terminal.
PROGRESS_INTERVAL_S = 30.0
#: Loggers of Dask's own processes (nannies, workers, scheduler, client, the dashboard's proxy):
#: INFO lines about workers registering are noise unless ``-v`` asks for them.
DASK_LOGGERS = ("distributed", "dask")
#: The dashboard's web stack: only its errors, unless ``-v`` (distributed's own defaults).
WEB_LOGGERS = {"bokeh": "error", "tornado": "critical"}


class ExecutorUnavailable(SarcoError):
    """The requested cluster cannot be started or reached."""


class _Done:
    """A finished result that quacks like a distributed Future."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value


class InlineExecutor:
    """Runs every task in this process, in submission order (``scheduler="inline"``)."""

    dashboard_link = None

    def submit(self, fn, *args, key=None, **kwargs):
        args = [a.result() if isinstance(a, _Done) else a for a in args]
        return _Done(fn(*args, **kwargs))

    def map(self, fn, *iterables, keys, **kwargs):
        return [self.submit(fn, *args, **kwargs) for args in zip(*iterables, strict=True)]

    def stream(self, fn, *iterables, keys, **kwargs):
        for args in zip(*iterables, strict=True):
            yield fn(*args, **kwargs)


class DaskExecutor:
    def __init__(self, client):
        self.client = client
        self.dashboard_link = getattr(client, "dashboard_link", None)

    def submit(self, fn, *args, key=None, **kwargs):
        return self.client.submit(fn, *args, key=key, pure=False, **kwargs)

    def map(self, fn, *iterables, keys, **kwargs):
        """One task per element, sent to the scheduler as one graph (the cohort histogram's groups).

        A ``submit`` per task costs the scheduler a graph update (and its bookkeeping) per task;
        one ``map`` halved the scheduler process's growth per task in a probe (README "Performance").
        The passes use :meth:`stream`, whose chunks are each one ``map``.
        """
        return self.client.map(fn, *iterables, key=list(keys), pure=False, **kwargs)

    def stream_chunk(self) -> int:
        """Tasks per chunk of :meth:`stream`: enough that every worker thread has two waiting."""
        threads = sum(self.client.nthreads().values())
        return max(MIN_STREAM_CHUNK, 2 * threads)

    def stream(self, fn, *iterables, keys, chunk: int | None = None, **kwargs):
        """The results of one task per element, in completion order, with at most two chunks in flight.

        A pass sent as one graph holds the scheduler's state for every one of its tasks at once
        (~10 KB per waiting task, and the allocator keeps those pages once they are free), so the
        scheduler process grew with the cohort: +55 MiB for the 4,000 tasks of 2,000 patients'
        pass 1 (README "Performance"). Chunks of ``chunk`` tasks (:meth:`stream_chunk`), the next
        sent each time a chunk's worth has finished, bound it; each chunk is one ``client.map``.
        """
        from distributed import as_completed  # lazy: Dask; the inline CPU path must not pay for it

        chunk = chunk or self.stream_chunk()
        todo = zip(*iterables, keys, strict=True)
        completed = as_completed()

        def send(n: int) -> None:
            batch = list(itertools.islice(todo, n))
            if batch:
                *columns, batch_keys = zip(*batch, strict=True)
                for future in self.client.map(fn, *columns, key=list(batch_keys), pure=False, **kwargs):
                    completed.add(future)

        send(2 * chunk)
        for taken, future in enumerate(completed, start=1):
            result = future.result()
            del future  # the scheduler forgets a finished task once its result is taken
            if taken % chunk == 0:
                send(chunk)  # at least one chunk is still in flight, so ``completed`` never runs dry early
            yield result


@contextmanager
def open_executor(scheduler: str | None, workers: int | None, backend: str):
    """The Dask client for a run: external scheduler, local (CUDA) cluster, or inline."""
    if scheduler == "inline":
        yield InlineExecutor()
        return
    # lazy: Dask; the inline CPU path must not pay for it
    import dask
    from distributed import Client

    # A local cluster's workers run without Dask's statistical profiler: it samples every thread's
    # stack every 10 ms and keeps up to 1,000 one-second profiles per worker, so a worker's memory
    # grew with the batch's duration, and it costs CPU (measured, README "Performance"). The dashboard
    # works without it; an external cluster keeps its own setting.
    no_profiler = {"distributed.worker.profile.enabled": False}
    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
    elif backend == "gpu":
        try:
            from dask_cuda import LocalCUDACluster  # lazy: dask_cuda, GPU runs only
        except ImportError as exc:
            raise ExecutorUnavailable("backend gpu needs dask-cuda for its local cluster: pip install "
                                      "'sarco-engine[gpu]' (or pass --scheduler to use an existing cluster)") from exc
        # One worker per GPU; DICOM decoding runs on the worker's CPU threads.
        with dask.config.set(no_profiler):
            cluster = LocalCUDACluster(threads_per_worker=max(1, (os.cpu_count() or 2) // 2),
                                       silence_logs=logging.WARNING)
        client = Client(cluster)
    else:
        from distributed import LocalCluster  # lazy: Dask; the inline CPU path must not pay for it

        # Processes, one thread each: pydicom decoding holds the GIL.
        with dask.config.set(no_profiler):
            cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                                   dashboard_address=":8787", silence_logs=logging.WARNING)
        client = Client(cluster)
    try:
        yield DaskExecutor(client)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def progress(results, total: int, desc: str, *, interval_s: float = PROGRESS_INTERVAL_S, stream=None):
    """``results`` passed through while the pass is reported.

    On a terminal: a tqdm bar. Otherwise (a nightly job, a CI log): a line every ``interval_s``
    seconds and one when the pass ends, e.g. ``pass 1: 120/2000 series, 3 failed, 1.3 series/s,
    about 24 min left``. Results with ``status == "error"`` count as failed, results with
    ``cached`` true are counted as taken from the cache.
    """
    stream = stream or sys.stderr
    if stream.isatty():
        with tqdm(total=total, desc=desc, unit="series", file=stream, leave=True) as bar:
            cached = 0
            for result in results:
                if isinstance(result, dict) and result.get("cached"):
                    cached += 1
                    bar.set_postfix_str(f"{cached} from the cache", refresh=False)
                bar.update(1)
                yield result
        return
    started = last = time.monotonic()
    done = failed = cached = 0
    for result in results:
        done += 1
        failed += isinstance(result, dict) and result.get("status") == "error"
        cached += isinstance(result, dict) and bool(result.get("cached"))
        now = time.monotonic()
        if now - last >= interval_s:
            last = now
            print(_progress_line(desc, done, total, failed, now - started, cached), file=stream, flush=True)
        yield result
    if total:
        print(_progress_line(desc, done, total, failed, time.monotonic() - started, cached), file=stream,
              flush=True)


def progress_reporter(desc: str, unit: str, *, interval_s: float = PROGRESS_INTERVAL_S, stream=None):
    """A ``callback(done, total)`` that reports a loop the caller drives (``sarco synth``; issue 21).

    The same lines as :func:`progress` (``synth: 20/60 patients, 0.8 patients/s, under a minute
    left``): one at most every ``interval_s`` seconds, counted from the first call's creation,
    and one when ``done == total``.
    """
    stream = stream or sys.stderr
    started = time.monotonic()
    last = [started]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= interval_s:
            last[0] = now
            print(_progress_line(desc, done, total, None, now - started, unit=unit), file=stream, flush=True)

    return report


def _progress_line(desc: str, done: int, total: int, failed: int | None, elapsed_s: float, cached: int = 0,
                   unit: str = "series") -> str:
    rate = done / elapsed_s if elapsed_s > 0 else float("inf")
    line = f"{desc}: {done}/{total} {unit}"
    if failed is not None:
        line += f", {failed} failed"
    if cached:  # a rerun says what it did not redo (issue 21)
        line += f", {cached} from the cache"
    if done and elapsed_s > 0:
        line += f", {rate:.1f} {unit}/s"
    if done < total and done and elapsed_s > 0:
        left_min = (total - done) / rate / 60
        line += f", about {left_min:.0f} min left" if left_min >= 1 else ", under a minute left"
    return line


def quiet_dask(verbose: bool) -> None:
    """Dask's INFO chatter (workers registering, nannies, the dashboard proxy) only with ``-v``.

    Its loggers write from this process and, through the config, from every worker process the
    local cluster spawns; both are set here. Without ``-v`` a ``UserWarning`` that the dashboard's
    port is in use is dropped (Dask takes another port, and the run prints the address it got),
    and bokeh's warning about the dashboard's wildcard host (Dask's own setting, nothing a user
    can act on) is silenced with bokeh's other warnings.
    """
    import dask  # lazy: Dask; the inline CPU path must not pay for it

    level = "info" if verbose else "warning"
    levels = {name: level for name in DASK_LOGGERS}
    levels.update({name: "info" for name in WEB_LOGGERS} if verbose else WEB_LOGGERS)
    # distributed applies this mapping to its loggers when it is first imported (and in every
    # worker process); the loggers that already exist are set directly
    dask.config.set({"logging": levels})
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value.upper())
    if not verbose:
        warnings.filterwarnings("ignore", message=".*[Pp]ort .* is already in use.*")


def tree_reduce(executor, futures: list, fn, fan_in: int = 8):
    """Combine partial results as a tree of tasks (each combine sees at most ``fan_in`` inputs)."""
    while len(futures) > 1:
        futures = [executor.submit(fn, *futures[i:i + fan_in]) for i in range(0, len(futures), fan_in)]
    return futures[0].result()


