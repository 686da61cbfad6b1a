"""Calls to Redis that carry every request waiting for them: a check made while no call is on
its way goes at once, alone; checks made while one is on its way go together in the next call,
one call per hash slot in a Cluster, all at once. At rest that is one round trip per request;
under load one round trip serves many, which saves most of the client's per-command CPU.

(No library does this: redis-py pipelines need the caller to know what to batch, and the
point here is that nobody waits for a batch to fill; it fills only while Redis is busy.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from app.state.redis_client import RedisClient, by_slot

Item = TypeVar("Item")
Answer = TypeVar("Answer")

# One call for items that share a slot: their answers in order, or None when Redis failed.
Send = Callable[[list[Item]], Awaitable[list[Answer] | None]]


class Coalescer(Generic[Item, Answer]):
    def __init__(
        self,
        redis: RedisClient,
        send: Send[Item, Answer],
        key: Callable[[Item], str],
        *,
        failed: Callable[[], bool],
    ) -> None:
        """`key` names the Redis key an item touches (its slot decides its call); `failed`
        says whether Redis is now down, so that the items queued meanwhile get None at once
        instead of a second timeout."""
        self._redis = redis
        self._send = send
        self._key = key
        self._failed = failed
        self._calling = False  # a call is on its way
        self._waiting: list[tuple[Item, asyncio.Future[Answer | None]]] = []
        self._calls: set[asyncio.Task[None]] = set()

    async def __call__(self, item: Item) -> Answer | None:
        if self._calling:
            answer: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
            self._waiting.append((item, answer))
            return await answer
        self._calling = True
        try:
            answers = await self._send([item])
        finally:
            self._send_waiting()
        return answers[0] if answers else None

    def cancel(self) -> None:
        """Shutdown: the calls on their way are cancelled, and so are their waiters."""
        for call in list(self._calls):
            call.cancel()

    def _send_waiting(self) -> None:
        """After a call: send the items that queued up meanwhile, or note that none is out."""
        waiting, self._waiting = self._waiting, []
        if not waiting or self._failed():
            self._calling = False
            for _, answer in waiting:
                if not answer.done():
                    answer.set_result(None)
            return
        call = asyncio.create_task(self._send_for(waiting))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _send_for(self, waiting: list[tuple[Item, asyncio.Future[Answer | None]]]) -> None:
        try:
            # A Cluster runs a script on one slot's keys: one call per slot, all at once, each
            # slot's items in their order of arrival.
            groups = by_slot(self._redis, waiting, lambda w: self._key(w[0]))
            answered = await asyncio.gather(*(self._send([w[0] for w in g]) for g in groups))
            waiting = [w for g in groups for w in g]
            answers: list[Answer | None] = []
            for g, group_answers in zip(groups, answered, strict=True):
                answers.extend(group_answers if group_answers is not None else [None] * len(g))
        except Exception as exc:  # not Redis's failure (that is None): each waiter gets it
            for _, answer in waiting:
                if not answer.done():
                    answer.set_exception(exc)
        except BaseException:  # this task was cancelled (shutdown)
            for _, answer in waiting:
                answer.cancel()
            raise
        else:
            for (_, answer), one in zip(waiting, answers, strict=True):
                if not answer.done():  # its request may have gone away meanwhile
                    answer.set_result(one)
        finally:
            self._send_waiting()
