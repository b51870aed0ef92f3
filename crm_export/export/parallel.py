"""Streams side by side (``[export] max_parallel_streams``), parents before children.

A stream starts once every stream it depends on has finished, whatever their outcome: as
when they ran one after the other, a child of a failed or paused parent still runs, and
its records that need a missing parent fail on their own (ExportErrors) and go again with
the re-export. Streams that do not depend on each other run at the same time, up to the
limit, started in the order given (the config's order, parents first). Results come back
in that same order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

R = TypeVar("R")


def run_streams(
    names: Sequence[str],
    depends_on: Mapping[str, Sequence[str]],
    run: Callable[[str], R],
    max_parallel: int,
) -> list[R]:
    """``run`` each of ``names`` (topologically ordered), up to ``max_parallel`` at once,
    none before the streams it depends on have finished. With 1, one after the other on
    this thread. If a ``run`` raises, no other stream starts; those running finish, then
    the first error is raised."""
    if max_parallel <= 1:
        return [run(name) for name in names]
    known = set(names)
    needs = {n: {d for d in depends_on.get(n, ()) if d in known and d != n} for n in names}
    results: dict[str, R] = {}
    waiting = list(names)
    running: dict[Future[R], str] = {}
    error: BaseException | None = None
    with ThreadPoolExecutor(max_parallel, thread_name_prefix="stream") as pool:
        while waiting or running:
            if error is None:
                for name in [n for n in waiting if needs[n] <= results.keys()]:
                    if len(running) >= max_parallel:
                        break
                    waiting.remove(name)
                    running[pool.submit(run, name)] = name
            if not running:
                break  # an error stopped the rest from starting
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                try:
                    results[name] = future.result()
                except BaseException as exc:  # raised once the others are done
                    error = error or exc
    if error is not None:
        raise error
    return [results[n] for n in names]
