"""The order streams run in: parents before children.

A child's lookups are resolved by Salesforce against parents already there, so a stream runs
after every stream it depends on; streams that do not depend on each other keep the order
of the config file. Pure: the config uses it to reject cycles, the jobs to order the runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class DependencyCycle(ValueError):
    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = list(cycle)
        super().__init__(" -> ".join(self.cycle))


def dependency_order(names: Sequence[str], depends_on: Mapping[str, Sequence[str]]) -> list[str]:
    """``names`` in a topological order of ``depends_on`` (stream -> the streams it needs
    first), ties broken by the position in ``names``. Raises ``DependencyCycle``."""
    position = {name: i for i, name in enumerate(names)}
    needs = {name: [d for d in depends_on.get(name, ()) if d in position] for name in names}
    done: list[str] = []
    placed: set[str] = set()
    while len(done) < len(names):
        # The first stream, in config order, whose parents have all been placed.
        ready = next((n for n in names if n not in placed and set(needs[n]) <= placed), None)
        if ready is None:
            raise DependencyCycle(_a_cycle([n for n in names if n not in placed], needs))
        done.append(ready)
        placed.add(ready)
    return done


def _a_cycle(left: Sequence[str], needs: Mapping[str, Sequence[str]]) -> list[str]:
    """One cycle among the streams ``left`` (each needs another of them): follow the needs
    from the first until a stream repeats."""
    remaining = set(left)
    path = [left[0]]
    while True:
        step = next(d for d in needs[path[-1]] if d in remaining)
        if step in path:
            return [*path[path.index(step) :], step]
        path.append(step)
