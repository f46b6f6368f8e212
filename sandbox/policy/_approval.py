"""Approvals for ``ask`` decisions: what an approver is asked (`ApprovalRequest`) and how a sync
or async approver is called with a deadline it cannot overrun."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Union, cast

from sandbox.policy._context import CallContext, Decision, Principal


@dataclass(frozen=True)
class ApprovalRequest:
    """What an approval callback is asked: one call, with its context and why it is asked."""

    context: CallContext
    reason: str
    rule: str | None

    @property
    def principal(self) -> Principal:
        return self.context.principal

    @property
    def capability(self) -> str:
        return self.context.capability

    @property
    def arguments(self) -> Mapping[str, Any]:
        return self.context.arguments


ApprovalAnswer = Union[bool, Decision, None]
Approver = Callable[[ApprovalRequest], Union[ApprovalAnswer, Awaitable[ApprovalAnswer]]]
"""An approval callback: returns True/False (or a `Decision`), or an awaitable of one."""


def call_approver(
    approve: Approver, request: ApprovalRequest, timeout: float, loop: asyncio.AbstractEventLoop | None
) -> ApprovalAnswer:
    """Call a sync or async approver with a deadline; raise `TimeoutError` when it passes.

    A sync approver runs on a daemon thread so a hung callback cannot hold the run past the
    timeout. An async one runs on ``loop`` when given (and running in another thread), else on
    a fresh loop in a daemon thread.
    """
    if inspect.iscoroutinefunction(approve) or inspect.iscoroutinefunction(getattr(approve, "__call__", None)):
        def coroutine() -> Coroutine[Any, Any, ApprovalAnswer]:
            return cast("Coroutine[Any, Any, ApprovalAnswer]", approve(request))

        if loop is not None and loop.is_running() and not _on_loop(loop):
            future = asyncio.run_coroutine_threadsafe(coroutine(), loop)
            try:
                return future.result(timeout)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise TimeoutError from None
        return _on_thread(lambda: asyncio.run(_bounded(coroutine(), timeout)), timeout)

    def sync() -> ApprovalAnswer:
        answer = approve(request)
        if inspect.isawaitable(answer):
            return asyncio.run(_bounded(answer, timeout))
        return answer

    return _on_thread(sync, timeout)


async def _bounded(awaitable: Awaitable[ApprovalAnswer], timeout: float) -> ApprovalAnswer:
    return await asyncio.wait_for(awaitable, timeout)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _on_thread(func: Callable[[], ApprovalAnswer], timeout: float) -> ApprovalAnswer:
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:  # reported to the caller below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="sandbox-approval", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError
    if "error" in box:
        error = box["error"]
        if isinstance(error, asyncio.TimeoutError):
            raise TimeoutError
        raise error
    return box.get("value")

