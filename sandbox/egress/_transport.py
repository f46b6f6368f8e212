"""The network backend of egress requests: resolves a host at connect time, refuses every
address `address_refusal` refuses, connects only to the checked addresses, and bounds each
read by the call's deadline.
"""

from __future__ import annotations

import httpcore
import httpx
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from sandbox.egress._policy import Egress, address_refusal


class Refused(Exception):
    """Raised inside the network backend when no address of a host may be connected to."""


class PinnedBackend(httpcore.NetworkBackend):
    """Resolves, checks every address, and connects to a checked address: no second lookup."""

    def __init__(self, egress: Egress, resolve: Callable[[str, int], list[str]], deadline: float) -> None:
        self._egress = egress
        self._resolve = resolve
        self._deadline = deadline
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self._resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from None
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}")
        for address in addresses:
            reason = address_refusal(address, self._egress)
            if reason is not None:
                raise Refused(f"{host} resolves to {address}, a {reason}")
        last: Exception | None = None
        for address in addresses:
            try:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    raise httpcore.ConnectTimeout("the call's deadline passed")
                timeout = left if timeout is None else min(timeout, left)
                stream = self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
                return _DeadlineStream(stream, self._deadline)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        raise Refused("unix sockets are not reachable through http")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), in resolver order, deduplicated."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write waits at most until the call's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _left(self, timeout: float | None) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the call's deadline passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, self._left(timeout)), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class BodyStream(httpx.SyncByteStream):
    def __init__(self, response: httpcore.Response) -> None:
        self._response = response

    def __iter__(self) -> Any:
        yield from cast(Iterable[bytes], self._response.stream)  # a sync response streams bytes

    def close(self) -> None:
        self._response.close()
