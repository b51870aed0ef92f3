"""Several Collections calls of one stream in flight at once (skip mode, ``max_in_flight``).

``SendWindow`` is the policy, pure: a batch may go while fewer than ``size`` batches are
unacknowledged and none of them holds one of its record keys (a row updated during the run
never races its older version: the later batch waits until the earlier one is
acknowledged, so Salesforce ends with the latest row); batches are acknowledged in the order
they were read, each once it and every batch before it have their answer. The position
therefore only moves over a contiguous prefix of acknowledged batches, and a crash sends
again at most the batches that were in flight.

``InFlight`` drives it: each batch is sent on a thread of its own and acknowledged on the
stream's thread, in order. Whatever goes wrong in a batch (retries spent, a configuration
error, the API budget) is raised once the batches before it are acknowledged; the batches
behind it are waited for and left unacknowledged (sent again by the next run, which upsert
makes harmless), and their calls still count in the run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from crm_export.ports import SourceRow

from .outcome import BatchOutcome
from .stream_run import Answer, StreamRun

T = TypeVar("T")


@dataclass
class _Slot(Generic[T]):
    keys: frozenset[str]
    item: T
    answered: bool = False


@dataclass
class SendWindow(Generic[T]):
    """Which batches may be sent now, and which may be acknowledged (see the module)."""

    size: int
    _slots: deque[_Slot[T]] = field(default_factory=deque)
    _busy: dict[str, int] = field(default_factory=dict)  # key -> unacknowledged batches

    def __len__(self) -> int:
        return len(self._slots)

    def may_send(self, keys: Collection[str]) -> bool:
        """Whether a batch with ``keys`` may go now, behind those unacknowledged.

        Keys are compared without case: an external ID field is case-insensitive unless it
        is marked case-sensitive, so "K-1" and "k-1" may be one record. Treating them as one
        can only make a batch wait, never let two versions of a record race.
        """
        return len(self._slots) < self.size and not any(k.casefold() in self._busy for k in keys)

    def sent(self, keys: Collection[str], item: T) -> None:
        """A batch went out (after ``may_send`` said so); ``item`` stands for it."""
        if not self.may_send(keys):
            raise ValueError("a batch sent that the window does not let go")
        slot = _Slot(frozenset(k.casefold() for k in keys), item)
        self._slots.append(slot)
        for key in slot.keys:
            self._busy[key] = self._busy.get(key, 0) + 1

    def answered(self, item: T) -> None:
        next(s for s in self._slots if s.item is item).answered = True

    def oldest(self) -> T | None:
        """The batch to acknowledge next (once answered), or None when none is out."""
        return self._slots[0].item if self._slots else None

    def ackable(self) -> list[T]:
        """The answered batches at the front, in order: those that may be acknowledged."""
        ready: list[T] = []
        for slot in self._slots:
            if not slot.answered:
                break
            ready.append(slot.item)
        return ready

    def acknowledged(self, item: T) -> None:
        """``item``, the oldest batch, is acknowledged: its keys are free again."""
        slot = self._slots[0]
        if slot.item is not item or not slot.answered:
            raise ValueError("batches are acknowledged in order, once answered")
        self._slots.popleft()
        for key in slot.keys:
            left = self._busy[key] - 1
            if left:
                self._busy[key] = left
            else:
                del self._busy[key]

    def pending(self) -> list[T]:
        """Every batch not acknowledged, oldest first."""
        return [s.item for s in self._slots]


@dataclass(eq=False)
class _Batch:
    rows: list[SourceRow]
    sent: list[SourceRow]
    future: Future[Answer]


Acknowledge = Callable[[list[SourceRow], BatchOutcome, tuple[int, int]], None]
Observe = Callable[[list[SourceRow], BatchOutcome], None]


class InFlight:
    """Sends batches of one stream with up to ``size`` calls in flight. On the caller's
    thread, in order: ``acknowledge`` (rows read, outcome, calls spent) commits a batch,
    then ``observe`` looks at it (the flood guard, which may stop the run)."""

    def __init__(
        self, run: StreamRun, size: int, acknowledge: Acknowledge, observe: Observe
    ) -> None:
        self.run = run
        self.window: SendWindow[_Batch] = SendWindow(size)
        self._acknowledge = acknowledge
        self._observe = observe
        self._pool = ThreadPoolExecutor(size, thread_name_prefix=f"send-{run.plan.name}")

    def send(self, rows: list[SourceRow], sending: Sequence[SourceRow]) -> None:
        """Send ``sending`` (the rows of ``rows`` that go), acknowledging the batches before
        it as they are answered; waits while the window is full or holds one of its keys."""
        plan = self.run.plan
        keys = {plan.record_key(r) for r in sending}
        while not self.window.may_send(keys):
            self._ack_oldest()
        # Read now, on this thread: no batch with these keys is unacknowledged.
        known = self.run.known(sending)
        future = self._pool.submit(self.run.send_measured, sending, known)
        batch = _Batch(rows, list(sending), future)
        self.window.sent(keys, batch)
        self._ack_answered()

    def finish(self) -> None:
        """Acknowledge every batch still out, in order (raising what one of them raised)."""
        while self.window.oldest() is not None:
            self._ack_oldest()

    def close(self) -> None:
        """After ``finish``, or after an error: wait for the calls still out (an HTTP call
        cannot be taken back), leave them unacknowledged, count what they spent."""
        for batch in self.window.pending():
            answer = batch.future.result()
            self.run.spent_unacked(answer.spent)
        self._pool.shutdown(wait=True)

    def _ack_answered(self) -> None:
        for batch in self.window.pending():
            if batch.future.done():
                self.window.answered(batch)
        for batch in self.window.ackable():
            self._ack(batch)

    def _ack_oldest(self) -> None:
        batch = self.window.oldest()
        assert batch is not None
        batch.future.result()
        self.window.answered(batch)
        self._ack(batch)

    def _ack(self, batch: _Batch) -> None:
        answer = batch.future.result()
        if answer.error is not None:
            # Not acknowledged: close() counts its calls with those behind it.
            raise answer.error
        assert answer.outcome is not None
        # Committed first: a commit that fails leaves the batch (and its calls) to close().
        self._acknowledge(batch.rows, answer.outcome, answer.spent)
        self.window.acknowledged(batch)
        self._observe(batch.rows, answer.outcome)
