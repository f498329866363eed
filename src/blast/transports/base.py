"""The transport interface: one message in, one ``Outcome`` out.

A transport only moves bytes to the next hop and reports what happened. Everything above it
(claiming from the ledger, rate limits, retries, the fallback outbox, audit) lives in the sender
pool, so every transport stays small and a test can swap one in without monkeypatching.

``send`` may be called concurrently from many tasks; a transport that holds connections shares
them between those calls (the relay transport chains concurrent messages on its connections and
pipelines them where the server allows). ``send_many`` is the same thing for a batch the caller
already holds, without a task per message. Neither raises for a failed delivery: partial failure
is data, one ``Outcome`` per message, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from blast.delivery import Message, Outcome

__all__ = ["Transport"]


@runtime_checkable
class Transport(Protocol):
    """Delivers messages to the next hop. Implemented by relay, outbox and memory transports."""

    async def send(self, message: Message) -> Outcome:
        """Deliver one message; never raises for a delivery failure (see ``Outcome``)."""
        ...

    async def send_many(self, messages: Sequence[Message]) -> list[Outcome]:
        """Deliver a batch; one ``Outcome`` per message, in the same order."""
        ...

    async def aclose(self) -> None:
        """Close connections and files. The transport is not used afterwards."""
        ...
