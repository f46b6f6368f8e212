"""The restricted runtime's inside: RestrictedPython with our policy, run in the caller's process.

`execute` (in `executor`) is the entry point; `GuestState` keeps a session's globals.
"""

from runtimes.restricted.executor import GuestState, execute

__all__ = ["GuestState", "execute"]
