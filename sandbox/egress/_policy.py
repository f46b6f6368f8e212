"""`Egress`: what the built-in ``http`` capability may reach, and `address_refusal`, the check
every resolved address passes before a socket is opened.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator

from sandbox.errors import ConfigurationError
from sandbox.secrets import normalize_host_pattern


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


_METADATA = (
    ipaddress.ip_network("169.254.0.0/16"),  # link-local, cloud metadata 169.254.169.254
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS IPv6 metadata
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba metadata
)


class Egress(BaseModel):
    """What the built-in ``http`` capability may reach.

    Args:
        allow: host patterns the guest may request (``"api.github.com"``, ``"*.example.com"``,
            ``"127.0.0.1:8080"``; ``"*"`` allows any host, addresses are still checked).
        methods: HTTP methods allowed (default ``GET`` only).
        schemes: URL schemes allowed (default ``https`` only; add ``"http"`` explicitly).
        max_response_bytes: ceiling on a response body after decompression (default 1 MiB).
        max_request_bytes: ceiling on a request body (default 1 MiB).
        timeout: seconds for one call, redirects included (default 10).
        max_redirects: redirect hops followed, each re-checked (default 5; 0 returns the 3xx).
        allow_private: also allow loopback, private (RFC 1918, ULA), CGNAT and reserved
            addresses. Link-local and cloud metadata addresses stay refused.
        allow_networks: CIDR networks allowed whatever their kind, e.g. ``["127.0.0.1/32"]``
            for a local test server, or ``["169.254.169.254/32"]`` if you really mean it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    allow: tuple[str, ...]
    methods: tuple[str, ...] = ("GET",)
    schemes: tuple[str, ...] = ("https",)
    max_response_bytes: PositiveInt = 1 << 20
    max_request_bytes: PositiveInt = 1 << 20
    timeout: PositiveFloat = 10.0
    max_redirects: int = Field(default=5, ge=0, le=20)
    allow_private: bool = False
    allow_networks: tuple[str, ...] = ()

    @field_validator("allow", mode="before")
    @classmethod
    def _patterns(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else list(value)
        if not items:
            raise ConfigurationError("Egress(allow=[...]) needs at least one host pattern, e.g. ['api.github.com']")
        return tuple(normalize_host_pattern(item) for item in items)

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else list(value)
        result = []
        for item in items:
            method = str(item).upper()
            if method not in _METHODS:
                raise ConfigurationError(f"method {item!r} is not supported: use {', '.join(sorted(_METHODS))}")
            result.append(method)
        if not result:
            raise ConfigurationError("Egress(methods=[...]) needs at least one method")
        return tuple(result)

    @field_validator("schemes", mode="before")
    @classmethod
    def _schemes(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else list(value)
        result = tuple(str(item).lower() for item in items)
        if not result or any(item not in ("http", "https") for item in result):
            raise ConfigurationError("Egress(schemes=...) accepts 'https' and 'http'")
        return result

    @field_validator("allow_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else list(value)
        result = []
        for item in items:
            try:
                result.append(str(ipaddress.ip_network(str(item), strict=False)))
            except ValueError:
                raise ConfigurationError(f"allow_networks entry {item!r} is not a CIDR network (e.g. '127.0.0.1/32')") from None
        return tuple(result)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in ipaddress.ip_network("64:ff9b::/96"):  # NAT64 well-known prefix
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in ipaddress.ip_network("::/96") and int(ip) > 1:  # deprecated IPv4-compatible
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(address: str, egress: Egress) -> str | None:
    """Why ``address`` is refused under ``egress`` (a short reason), or None when it is allowed."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    for network in egress.allow_networks:
        if ip in ipaddress.ip_network(network):
            return None
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            candidates.insert(0, inner)  # judge by the IPv4 address it really reaches
            for network in egress.allow_networks:
                if inner in ipaddress.ip_network(network):
                    return None
    for candidate in candidates:
        if any(candidate in network for network in _METADATA if network.version == candidate.version):
            return "link-local / cloud metadata address"
        if candidate.is_multicast:
            return "multicast address"
        if candidate.is_unspecified:
            return "unspecified address"
        if candidate.is_loopback:
            kind = "loopback address"
        elif not candidate.is_global or candidate.is_private or candidate.is_reserved:
            kind = "private or reserved address"
        else:
            continue
        if not egress.allow_private:
            return kind
    return None
