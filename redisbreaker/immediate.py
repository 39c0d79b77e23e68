"""Running code written once, as ``async def``, from threads without an event loop.

The transaction handle and the pub/sub hub have one implementation each, written as
coroutines that await a few I/O primitives. The asyncio classes give primitives that
really await. The thread classes give primitives that do their blocking work at once
and return an :class:`Immediate` holding the result: awaiting it never suspends, so
:func:`run_now` finishes the coroutine with a single ``send``. The twins therefore
cannot drift: there is one body, interpreted two ways.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Immediate(Generic[T]):
    """An awaitable whose value is already there."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, T]:
        yield from ()  # a generator that finishes without ever suspending
        return self.value


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end on this thread; everything it awaits must be an
    :class:`Immediate` (or a coroutine that only awaits those)."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return finished.value  # type: ignore[no-any-return]  # StopIteration.value is Any
    coroutine.close()
    raise RuntimeError("run_now: the coroutine suspended; a primitive is not Immediate")
