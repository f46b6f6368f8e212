"""Network egress: the built-in ``http`` capability and its `Egress` policy.

Guest code has no network of its own. A sandbox configured with ``egress=Egress(...)`` grants
the guest ``http.request(method, url, ...)`` plus ``http.get`` / ``http.post`` when those
methods are allowed. Every request, and every redirect hop, is checked on the host:

1. scheme, method and host against `Egress` (``allow`` host patterns, ``methods``, ``schemes``);
2. the host is resolved **at connect time, by our own network backend**, and every address it
   resolves to must be public (not loopback, private, link-local/metadata, multicast, reserved,
   CGNAT, or an IPv4 address hidden in IPv6), unless ``allow_private`` / ``allow_networks``
   say otherwise; the socket is then opened to one of exactly those checked addresses, so a
   DNS answer that changes between check and connect (rebinding) cannot bypass the check;
3. secret handles given as ``auth=`` or as header values are injected only if the hop's host
   matches the secret's ``hosts`` scope (a first request outside the scope is denied; on a
   redirect outside it the secret headers are dropped). A handle anywhere else (URL, body,
   params) fails validation: only ``str`` values are accepted there, so at most a handle's
   description, which holds its name and never its value, can be sent.

Responses are bounded by ``max_response_bytes`` (after decompression, counted while the body
streams: at most one ``gzip`` or ``deflate`` content encoding is accepted, anything else is
refused) and by ``timeout`` (the whole exchange, redirects included, and never longer than the
run's remaining time). Text is decoded with the response's charset only when it is one of a
fixed set (UTF-8/16/32, ASCII, Latin-1 and the common ISO-8859 and Windows code pages); any
other charset is decoded as UTF-8 with replacement characters. ``GET`` and ``HEAD`` carry no
body. Every call opens its own connections and closes them when it returns: nothing one call
(or run) left on a connection can reach another. Proxy environment variables are ignored. Failures reach
the guest as ``PolicyDenied`` (refused by policy, nothing was sent), ``ValueError`` (bad
arguments) or ``CapabilityError`` (network failure, timeout, oversized response).
"""

from __future__ import annotations

from sandbox.egress._client import EgressClient
from sandbox.egress._policy import Egress, address_refusal

__all__ = ["Egress", "EgressClient", "address_refusal"]
