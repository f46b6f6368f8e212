"""The host end of a run's capability calls: `RunBridge` and the faults it hands the guest.

A driver gives every guest call to `RunBridge.call`, which runs it on a host call thread
(`sandbox.call_threads`) while the guest's thread waits at most until the run's deadline or
its cancellation. On the call thread: lookup, secret resolution (`sandbox.secrets`), argument
validation (`Capability.bind`), policy (`sandbox.policy`), invocation, counting, recording
(`sandbox.audit`) and redaction of what goes back to the guest. The faults that end a call
are made here only: `cancelled_fault`, `deadline_fault`, `deny`.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sandbox import call_threads
from sandbox.call_time import set_call_deadline
from sandbox.capabilities import Capability, open_call_detail
from sandbox.runtime import CapabilityFault, RunControl
from sandbox.secrets import NO_REDACTION, Redactor, SecretBroker

if TYPE_CHECKING:
    import asyncio

    from sandbox.audit import RunRecorder
    from sandbox.policy import PolicyState


class PendingCall:
    """One capability call between the thread that waits for it and the thread that runs it.

    Whichever settles first wins: the runner records the call's outcome, or the waiter, at
    the deadline or on cancel, records it as abandoned; the other side then records nothing.
    """

    __slots__ = ("lock", "settled", "abandoned", "async_future")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.settled = False
        self.abandoned = False
        self.async_future: Any = None


class RunBridge:
    """The host end of one run's capability calls: lookup, secret resolution, validation,
    policy, invocation, counting, recording, and redaction of what goes back to the guest.

    Every call runs on a host call thread (`sandbox.call_threads`) while the guest's thread
    waits, at most until the run's deadline or its cancellation; a call still running then is
    abandoned (recorded as such, its result discarded) and the run ends. The capability sees
    the time left through `sandbox.capabilities.remaining_time`.
    """

    __slots__ = ("_capabilities", "_loop", "_control", "_secrets", "_redactor", "_policy", "_recorder", "_lock",
                 "_lean", "_waiting", "_cancel_hooked", "calls", "warnings")

    def __init__(
        self,
        capabilities: Mapping[str, Capability],
        loop: asyncio.AbstractEventLoop | None,
        control: RunControl,
        secrets: SecretBroker | None = None,
        policy: PolicyState | None = None,
        recorder: RunRecorder | None = None,
    ) -> None:
        self._capabilities = capabilities
        self._loop = loop
        self._control = control
        self._secrets = secrets
        self._redactor: Redactor = secrets.redactor if secrets is not None else NO_REDACTION
        self._policy = policy
        self._recorder = recorder
        self._lock = threading.Lock()
        self._lean = secrets is None and policy is None and recorder is None
        # Nothing to resolve, redact, ask or record: calls take `_run_lean`.
        self._waiting: set[call_threads.Call[Any]] = set()
        self._cancel_hooked = False
        self.calls = 0
        """Calls of granted capabilities handed to a call thread (see `call`)."""
        self.warnings: list[str] = []  # from `sandbox.capabilities.warn`, in call order

    def call(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run capability ``name`` on a call thread and return its plain-data result; raises the
        call's `CapabilityFault`, or `cancelled_fault` / `deadline_fault` when the run was
        cancelled or reached its deadline first (the call is then abandoned)."""
        control = self._control
        if control.cancelled:
            raise cancelled_fault()
        if control.deadline - time.monotonic() <= 0:
            raise deadline_fault(name)
        if not self._cancel_hooked:
            self._cancel_hooked = True
            control.on_cancel(self._wake_waiting)
        cap = self._capabilities.get(name)
        if cap is not None:
            # Counted as it is handed over, by the thread that hands it over: a run hands its
            # calls over one at a time (its guest runs on one thread), so no lock is needed.
            self.calls += 1
        pending: PendingCall | None = None
        if self._lean and cap is not None and not (cap.is_async and self._loop is not None):
            call = call_threads.start(contextvars.copy_context().run, self._run_lean, cap, args, kwargs)
        else:
            pending = PendingCall()
            call = call_threads.start(contextvars.copy_context().run, self._run_call, pending, name, args, kwargs)
        waiting = self._waiting
        waiting.add(call)
        try:
            # Cancel sets the flag before it calls the hooks: a cancel that came before ``add``
            # is seen here (the call is handed over, not waited for), one that comes after wakes the wait.
            done = call.wait_until(0.0 if control.cancelled else control.deadline)
        finally:
            waiting.discard(call)
        if not done and pending is not None:
            with pending.lock:
                done = pending.settled
                pending.abandoned = not done
            while done and not call.done:  # settled just now: its outcome is being published
                time.sleep(0.0001)
        if done:
            return call.result()  # the value, or raises the call's CapabilityFault
        if pending is not None and pending.async_future is not None:
            pending.async_future.cancel()
        if control.cancelled:
            self._record(name, None, args, kwargs, "abandoned", 0.0, error="the run was cancelled during the call")
            raise cancelled_fault()
        control.abandoned = name
        self._record(name, None, args, kwargs, "abandoned", 0.0,
                     error="still running at the run's wall-clock deadline: abandoned, its result discarded")
        raise deadline_fault(name)

    def _wake_waiting(self) -> None:
        """Cancel hook: every call this run waits for stops being waited for."""
        for call in list(self._waiting):
            call.wake()

    def _run_lean(self, cap: Capability, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """`_run_call` for a run without secrets, policy and records (so nothing to resolve,
        ask, redact or record) and a call that is not awaited on the host's loop: the same
        result or the same fault. Runs in a context copied for this call alone, so what it
        sets there needs no reset."""
        set_call_deadline(self._control.deadline)
        detail: dict[str, Any] = {}
        open_call_detail(detail)  # filled by the capability through record_detail() and warn()
        try:
            return cap.invoke(args, kwargs)
        except CapabilityFault as fault:
            raise fault from None
        except Exception as exc:
            raise CapabilityFault("CapabilityError", f"{cap.name}() failed: {type(exc).__name__}: {exc}") from None
        finally:
            if detail and detail.get("warnings"):
                with self._lock:
                    self.warnings.extend(detail["warnings"])

    def _run_call(self, pending: PendingCall, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """On a call thread: the call, its redaction, then its record unless it was abandoned."""
        set_call_deadline(self._control.deadline)
        started = time.perf_counter()
        record: dict[str, Any] = {}
        redactor = self._redactor
        try:
            value = self._call(pending, name, args, kwargs, record)
            if redactor:
                value = redactor.value(value)
        except CapabilityFault as fault:
            failure: CapabilityFault | None = redactor.fault(fault) if redactor else fault
        else:
            failure = None
        with pending.lock:
            if pending.abandoned:
                return None
            pending.settled = True
        if record:
            self._record(name, record.pop("arguments"), args, kwargs, record.pop("status"), started, **record)
        if failure is not None:
            raise failure
        return value

    def _call(self, pending: PendingCall, name: str, args: list[Any], kwargs: dict[str, Any],
              record: dict[str, Any]) -> Any:
        """The call itself; fills ``record`` with what the run record should say about it."""
        cap = self._capabilities.get(name)
        if cap is None:
            fault = CapabilityFault("CapabilityError", f"no capability named {name!r} was granted to this run")
            record.update(arguments=None, status="invalid", error=fault.message)
            raise fault
        arguments: dict[str, Any] | None = None
        verdict = None
        detail: dict[str, Any] = {}
        open_call_detail(detail)  # filled by the capability through record_detail(); the call's own context
        try:
            if self._secrets is not None:
                args, kwargs = self._secrets.resolve_arguments(name, args, kwargs)
            arguments = cap.bind(args, kwargs)
            if self._policy is not None:
                verdict = self._policy.check(name, arguments, cap.action_for(arguments))
                if not verdict.allowed:
                    raise deny(verdict.reason, ends_run=verdict.terminate)
            if cap.is_async and self._loop is not None:
                coroutine = _in_context(contextvars.copy_context(), cap.func(**arguments))
                import asyncio

                pending.async_future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
                result = cap.dump_result(pending.async_future.result())
            else:
                result = cap.call_bound(arguments)
        except CapabilityFault as fault:
            denied = fault.guest_type == "PolicyDenied"
            if denied and (verdict is None or verdict.allowed) and self._policy is not None and not fault.terminate:
                # A denial made elsewhere (a secret's scope, the capability itself) counts too.
                if self._policy.note_denial(name, fault.message):
                    fault = deny(f"{fault.message}; too many denials in this run: the run ends", ends_run=True)
            status = "denied" if denied else "invalid" if arguments is None else "failed"
            record.update(arguments=arguments, status=status, verdict=verdict, detail=detail,
                          reason=fault.message if denied else None, error=None if denied else fault.message)
            raise fault from None
        except Exception as exc:
            failure = CapabilityFault("CapabilityError", f"{name}() failed: {type(exc).__name__}: {exc}")
            record.update(arguments=arguments, status="failed", verdict=verdict, detail=detail, error=failure.message)
            raise failure from None
        finally:
            if detail.get("warnings"):
                with self._lock:
                    self.warnings.extend(self._redactor.text(w) for w in detail["warnings"])
        record.update(arguments=arguments, status="ok", verdict=verdict, detail=detail)
        return result

    def refuse(self, name: str, reason: str) -> None:
        """Record a call the driver refused before `call` (an ungranted name, a malformed payload)."""
        if self._recorder is not None:
            self._recorder.call(name, None, "invalid", error=reason)

    def _record(self, name: str, arguments: Mapping[str, Any] | None, args: list[Any], kwargs: dict[str, Any],
                status: Any, started: float, verdict: Any = None, **detail: Any) -> None:
        if self._recorder is not None:
            if arguments is None:  # not bound: summarise what the guest passed
                arguments = {**{f"#{i}": a for i, a in enumerate(args)}, **kwargs}
            duration = time.perf_counter() - started if started else 0.0
            self._recorder.call(name, arguments, status, verdict=verdict, duration=duration, **detail)


async def _in_context(context: contextvars.Context, awaitable: Any) -> Any:
    """Await ``awaitable`` with the call's context variables (deadline, record detail) set."""
    for var, value in context.items():
        var.set(value)
    return await awaitable


def cancelled_fault() -> CapabilityFault:
    """The fault a call gets when the host cancelled its run: the run ends ``cancelled``."""
    return CapabilityFault("Cancelled", "the run was cancelled by the host", terminate="cancelled")


def deadline_fault(name: str) -> CapabilityFault:
    """The fault a call gets at the run's wall-clock deadline: the run ends ``limit_exceeded``."""
    return CapabilityFault(
        "CapabilityError", f"{name}() was still running at the run's wall-clock deadline: abandoned",
        terminate="limit_exceeded",
    )


def deny(reason: str, *, ends_run: bool = False) -> CapabilityFault:
    """The fault of a call the run's policy refused: the guest sees ``PolicyDenied(reason)``;
    with ``ends_run`` (the policy's verdict says so, or too many denials) the run ends ``policy_denied``."""
    return CapabilityFault("PolicyDenied", reason, terminate="policy_denied" if ends_run else None)
