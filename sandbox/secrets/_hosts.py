"""Destination host patterns of a secret's or an egress policy's scope: parsing, canonical
request hosts, matching, and capability-name scopes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from sandbox.errors import ConfigurationError


_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")


def normalize_host_pattern(pattern: str) -> str:
    """Validate and normalise a destination pattern; raise `ConfigurationError` saying what is accepted.

    Accepted: ``"api.github.com"`` (that host only), ``"*.github.com"`` (any subdomain, not the
    apex), ``"*"`` (any host), an IP literal (``"127.0.0.1"``, ``"[::1]"``), each optionally
    followed by ``":<port>"`` to match that port only. Hosts are compared lowercased, IDNA-encoded,
    without a trailing dot.
    """
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigurationError(f"host pattern must be a non-empty string, got {pattern!r}")
    text = pattern.strip().lower()
    if "/" in text or "@" in text or "?" in text or "#" in text:
        raise ConfigurationError(f"host pattern {pattern!r} must be a host (optionally ':port'), not a URL")
    host, port = _split_port(text, pattern)
    if host == "*":
        return text
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigurationError(f"host pattern {pattern!r}: {host} is not an IPv6 address") from None
        return f"{host}:{port}" if port is not None else host
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    try:
        ipaddress.IPv4Address(name)
        is_ip = True
    except ValueError:
        is_ip = False
    if is_ip and wildcard:
        raise ConfigurationError(f"host pattern {pattern!r}: a wildcard cannot apply to an IP address")
    if not is_ip:
        name = _idna(name.rstrip("."), pattern)
        if "*" in name or not all(_LABEL.match(label) for label in name.split(".")):
            raise ConfigurationError(
                f"host pattern {pattern!r} is not valid: use 'host.example', '*.example' or '*', optionally with ':port'"
            )
    host = ("*." if wildcard else "") + name
    return f"{host}:{port}" if port is not None else host


def _split_port(text: str, original: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigurationError(f"host pattern {original!r}: unbalanced '['")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ConfigurationError(f"host pattern {original!r}: unexpected {rest!r} after the address")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ConfigurationError(f"host pattern {original!r}: write IPv6 addresses in brackets, e.g. '[::1]'")
    else:
        return text, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(f"host pattern {original!r}: port must be 1-65535")
    return host, int(port_text)


def _idna(name: str, original: str) -> str:
    try:
        return name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise ConfigurationError(f"host pattern {original!r} is not a valid hostname") from None


def canonical_host(host: str) -> str:
    """A request host as patterns see it: lowercased, no trailing dot, IPv6 in brackets."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        return host
    if ":" in host:
        return f"[{host}]"
    return host


def host_matches(host: str, port: int | None, patterns: Iterable[str]) -> bool:
    """True when ``host`` (with ``port``) matches one of the normalised ``patterns``."""
    host = canonical_host(host)
    for pattern in patterns:
        pattern_host, pattern_port = _split_port(pattern, pattern)
        if pattern_port is not None and pattern_port != port:
            continue
        if pattern_host == "*" or pattern_host == host:
            return True
        if pattern_host.startswith("*.") and host.endswith(pattern_host[1:]) and len(host) > len(pattern_host) - 1:
            return True
    return False


def scope_allows_capability(patterns: Iterable[str], capability: str) -> bool:
    """True when ``capability`` is one of ``patterns`` or lives in one of their namespaces
    (``"http"`` covers ``"http.get"``)."""
    return any(capability == p or capability.startswith(p + ".") for p in patterns)
