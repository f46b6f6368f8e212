"""The process driver's own phases of a run (`Sandbox(timings=True)`): the host's marks around
taking a child, the exchange with it and reaping it, merged with the phases the child reports."""

from __future__ import annotations

import time

from sandbox.runtime import Outcome


class PhaseClock:
    """The host's marks of one run on a child: started (now), child taken, exchange over; the
    reap ends when `apply` is called. Reads no clock when ``on`` is False (the job asked for no
    timings)."""

    __slots__ = ("_on", "_started", "_taken", "_exchanged")

    def __init__(self, on: bool) -> None:
        self._on = on
        self._started = self._taken = self._exchanged = time.perf_counter() if on else 0.0

    def taken(self) -> None:
        """Mark the child as taken (the exchange starts)."""
        if self._on:
            self._taken = time.perf_counter()

    def exchanged(self) -> None:
        """Mark the exchange with the child as over (the reap, if any, starts)."""
        if self._on:
            self._exchanged = time.perf_counter()

    def apply(self, outcome: Outcome) -> Outcome:
        """``outcome`` with the driver's phases as its timings (`with_phases`), the reap ending
        now; ``outcome`` itself when timings are off."""
        if not self._on:
            return outcome
        return with_phases(outcome, self._exchanged - self._taken, take=self._taken - self._started,
                           reap=time.perf_counter() - self._exchanged)


def with_phases(outcome: Outcome, exchange: float, **host: float) -> Outcome:
    """``outcome`` with the driver's phases as its timings: the host's own (``host``: taking
    the child, reaping it), the child's (its word, from its ``done`` frame, scaled down to fit
    the exchange if it claims more) and ``channel``, the rest of the exchange: writing the job,
    the wake-ups on both sides, reading and parsing the child's frames."""
    child = outcome.timings or {}
    claimed = sum(child.values())
    if claimed > exchange:
        child = {name: seconds * exchange / claimed for name, seconds in child.items()}
    timings = {**host, **child, "channel": max(0.0, exchange - sum(child.values()))}
    return outcome.model_copy(update={"timings": timings})
