"""Execution IDs and DeepUM's two correlation tables.

DeepUM hashes each kernel launch (its name and arguments) to an execution ID,
so that the same launch in the next training iteration gets the same ID. Two
tables then record what follows what:

* the execution-ID correlation table (:class:`SuccessorTable`): for the last
  three IDs, the IDs seen to come next, most recent first;
* the page correlation table (:class:`PageCorrelation`): for each ID, the pages
  that operator touched, in order.

A :class:`Predictor` chains through them: from the current history it predicts
the next ID, appends it to the history, predicts again, and so keeps a window
of the next N operators and the pages they will touch.

[Note: stable keys]
A page table keyed by live storages forgets everything at the end of an
iteration, because activations die and are born again. The page correlation
table therefore names pages by *stable keys*, which the glue assigns when a
page first appears: a page born as output ``i`` of the operator with execution
ID ``e`` is ``("born", e, i)``; a page first seen as an input (a parameter, a
batch that came from a data loader) is named by where it was first seen. The
same role in the next iteration gets the same stable key. Execution IDs are
in turn made of the operator and the stable keys of its inputs, so they also
recur, and they tell apart operators that differ only by which layer's
parameters they use. This module interns both kinds of key as small ints and
does not care how they were formed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable

HISTORY = 3  # DeepUM's history length
MAX_SUCCESSORS = 4


class Interner:
    """Maps hashable keys to small ints, 0, 1, 2, ..."""

    def __init__(self) -> None:
        self._ids: dict[Hashable, int] = {}
        # The ID of a key seen before, else None, in one C call (the interceptor's fast path).
        self.known = self._ids.get

    def __len__(self) -> int:
        return len(self._ids)

    def __call__(self, key: Hashable) -> int:
        i = self._ids.get(key)
        if i is None:
            i = self._ids[key] = len(self._ids)
        return i


class SuccessorTable:
    """History of the last :data:`HISTORY` execution IDs -> the IDs seen next."""

    def __init__(self) -> None:
        self._next: dict[tuple[int, ...], list[int]] = {}
        # history -> the successors list (most recent first) or None, in one C call (hot path).
        self.get = self._next.get

    def __len__(self) -> int:
        return len(self._next)

    def record(self, history: tuple[int, ...], nxt: int) -> None:
        succ = self._next.get(history)
        if succ is None:
            self._next[history] = [nxt]
        elif succ[0] != nxt:
            # Most recent first: a changed branch is predicted from its second visit.
            if nxt in succ:
                succ.remove(nxt)
            succ.insert(0, nxt)
            del succ[MAX_SUCCESSORS:]

    def predict(self, history: tuple[int, ...]) -> int | None:
        succ = self._next.get(history)
        return succ[0] if succ else None

    def successors(self, history: tuple[int, ...]) -> list[int]:
        return list(self._next.get(history, ()))


class PageCorrelation:
    """Execution ID -> stable keys of the pages that operator touches, in order."""

    def __init__(self) -> None:
        self._pages: dict[int, tuple[int, ...]] = {}
        # (eid, default) -> the stable keys, in one C call (hot path; :meth:`pages` with a default).
        self.get = self._pages.get

    def __len__(self) -> int:
        return len(self._pages)

    def record(self, eid: int, skeys: Iterable[int]) -> None:
        self._pages[eid] = tuple(skeys)

    def pages(self, eid: int) -> tuple[int, ...]:
        return self._pages.get(eid, ())


class Predictor:
    """Keeps a window of the next ``lookahead`` predicted operators.

    ``observe(eid)`` is called once per operator. It teaches the successor
    table and slides the window (or rebuilds it after a misprediction).
    ``window_pages`` counts, per stable key, how many window operators touch
    the page; pre-eviction leaves those pages alone.
    """

    def __init__(self, successors: SuccessorTable, pages: PageCorrelation, lookahead: int) -> None:
        if lookahead < 1:
            raise ValueError("lookahead must be at least 1")
        self.successors = successors
        self.pages = pages
        self.lookahead = lookahead
        self.history: deque[int] = deque(maxlen=HISTORY)
        self.window: deque[int] = deque()
        self.window_pages: dict[int, int] = {}
        # The last HISTORY IDs of history + window: where the next prediction starts.
        self._tail: deque[int] = deque(maxlen=HISTORY)
        self.predictions = 0
        self.correct = 0

    def observe(self, eid: int) -> bool:
        """Record that ``eid`` ran; return whether it was the predicted one."""
        # Runs once per intercepted operator: locals and plain dicts, no helper call on a hit.
        window = self.window
        hit = False
        if window:
            self.predictions += 1
            if window[0] == eid:
                hit = True
                self.correct += 1
        history = self.history
        # A window is only ever filled from a full tail, so with a window the history is
        # full (and stays so: it has a maximum length and is never cleared).
        if window or len(history) == HISTORY:
            key = tuple(history)
            succ = self.successors.get(key)
            if succ is None or succ[0] != eid:  # (a repeat teaches nothing: no call)
                self.successors.record(key, eid)
        history.append(eid)
        if hit:
            window.popleft()
            counts = self.window_pages
            for skey in self.pages.get(eid, ()):
                n = counts[skey] - 1
                if n:
                    counts[skey] = n
                else:
                    del counts[skey]
        else:
            window.clear()
            self.window_pages.clear()
            self._tail = deque(history, maxlen=HISTORY)
        lookahead = self.lookahead
        if len(window) < lookahead and (hit or len(self._tail) == HISTORY):
            # Refill from the tail: SuccessorTable.predict and PageCorrelation.pages
            # written out, as is the loop itself (once per operator). A full tail
            # stays full (its appends keep its length), and after a hit it is full
            # (the window it predicted was filled from it).
            tail, counts = self._tail, self.window_pages
            successors, pages = self.successors.get, self.pages.get
            while True:
                succ = successors(tuple(tail))
                if not succ:
                    break
                nxt = succ[0]
                window.append(nxt)
                tail.append(nxt)
                for skey in pages(nxt, ()):
                    counts[skey] = counts.get(skey, 0) + 1
                if len(window) >= lookahead:
                    break
        return hit

    @property
    def accuracy(self) -> float:
        return self.correct / self.predictions if self.predictions else 0.0

    def next_use(self, skey: int) -> int | None:
        """How many operators ahead the page is predicted to be used, or None."""
        if skey not in self.window_pages:
            return None
        for distance, eid in enumerate(self.window, 1):
            if skey in self.pages.pages(eid):
                return distance
        return None

    def first_uses(self) -> dict[int, int]:
        """Stable key -> how many operators ahead the window first uses it
        (:meth:`next_use` of every window page, in one pass)."""
        first: dict[int, int] = {}
        pages = self.pages.pages
        for distance, eid in enumerate(self.window, 1):
            for skey in pages(eid):
                first.setdefault(skey, distance)
        return first
