"""An in-memory transport: records every message it is given. For tests and ``--dry-run``.

Like httpx's ``MockTransport``, it takes an optional handler deciding each message's outcome, so a
test can script deferrals and bounces without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from blast.delivery import Message, Outcome, Status, TLSEvidence

__all__ = ["MemoryTransport"]

_EVIDENCE = TLSEvidence(host="memory")


class MemoryTransport:
    """Keeps the messages it is given in ``messages`` (in arrival order) and answers ``handler``.

    ``handler(message) -> Outcome`` defaults to accepting everything with a queue id ``mem-N``.
    """

    def __init__(self, handler: Callable[[Message], Outcome] | None = None) -> None:
        self.messages: list[Message] = []
        self.outcomes: list[Outcome] = []
        self.closed = False
        self._handler = handler

    async def send(self, message: Message) -> Outcome:
        """Record the message and return the handler's outcome for it."""
        if self.closed:
            raise RuntimeError("MemoryTransport used after aclose()")
        self.messages.append(message)
        if self._handler is None:
            outcome = Outcome(
                status=Status.SENT,
                code=250,
                reply="accepted in memory",
                queue_id=f"mem-{len(self.messages)}",
                tls=_EVIDENCE,
            )
        else:
            outcome = self._handler(message)
        self.outcomes.append(outcome)
        return outcome

    async def send_many(self, messages: Sequence[Message]) -> list[Outcome]:
        """Record every message of the batch; one outcome each, in order."""
        return [await self.send(message) for message in messages]

    async def aclose(self) -> None:
        self.closed = True
