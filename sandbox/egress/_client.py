"""`EgressClient`: the ``http`` capabilities of one sandbox. It checks every request and redirect
hop against the `Egress` policy, injects secret handles only into hosts of their scope, bounds
the response, and keeps injected values out of httpcore's debug logs.
"""

from __future__ import annotations

import base64
import httpcore
import httpx
import inspect
import logging
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from sandbox.call_time import call_timeout
from sandbox.capabilities import Capability
from sandbox.egress._policy import Egress
from sandbox.egress._transport import BodyStream, PinnedBackend, Refused, system_resolve
from sandbox.runtime import CapabilityFault
from sandbox.secrets import Redactor, SecretValue, canonical_host, host_matches


_REDIRECTS = {301, 302, 303, 307, 308}
_FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "accept-encoding",
    }
)


_BODILESS = frozenset({"GET", "HEAD"})
_CHARSETS = {  # the charsets a response may choose, by normalised label, and the codec used
    **{label: "utf-8" for label in ("utf-8", "utf8", "unicode-1-1-utf-8")},
    **{label: "utf-8-sig" for label in ("utf-8-sig",)},
    **{label: "ascii" for label in ("ascii", "us-ascii", "ansi-x3.4-1968", "iso646-us")},
    **{label: "latin-1" for label in ("latin-1", "latin1", "iso-8859-1", "iso8859-1", "l1")},
    **{f"iso-8859-{n}": f"iso8859-{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)},
    **{f"iso8859-{n}": f"iso8859-{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)},
    **{f"windows-{n}": f"cp{n}" for n in range(1250, 1259)},
    **{f"cp{n}": f"cp{n}" for n in range(1250, 1259)},
    **{label: label for label in ("utf-16", "utf-16le", "utf-16be", "utf-32", "utf-32le", "utf-32be")},
}
_ENCODINGS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


def _deny(message: str) -> CapabilityFault:
    return CapabilityFault("PolicyDenied", message)


class _TraceLogGuard(logging.Filter):
    """Keeps secrets out of httpcore's DEBUG traces of our requests.

    httpcore logs ``receive_response_headers.complete return_value=(..., headers)`` at DEBUG;
    a server that echoes a header we injected would put the value in the host's logs. While a
    thread is inside `EgressClient.request`, this filter drops that event's headers and
    redacts every value revealed in the call from any other httpcore trace line.
    """

    _LOGGERS = ("httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.connection_pool")

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()
        for name in self._LOGGERS:
            logging.getLogger(name).addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        redactor: Redactor | None = getattr(self.local, "redactor", None)
        if redactor is None:
            return True
        message = record.getMessage()
        if message.startswith("receive_response_headers.complete"):
            message = "receive_response_headers.complete (headers omitted by sandbox.egress)"
        record.msg, record.args = redactor.text(message), ()
        return True

    def active(self, values: dict[str, str]) -> Any:
        guard = self

        class _Scope:
            def __enter__(self) -> None:
                self.previous = getattr(guard.local, "redactor", None)
                guard.local.redactor = Redactor(values)

            def __exit__(self, *exc: object) -> None:
                guard.local.redactor = self.previous

        return _Scope()


_TRACE_GUARD = _TraceLogGuard()


class EgressClient:
    """The ``http`` capabilities of one `Sandbox` under one `Egress` policy; thread-safe.

    Every call gets its own connection pool, whose network backend pins each connection to a
    checked address, and closes it before returning: no connection outlives the call.
    """

    def __init__(self, egress: Egress, *, resolve: Callable[[str, int], list[str]] = system_resolve) -> None:
        if not isinstance(egress, Egress):
            raise TypeError(f"egress must be a sandbox.Egress, not {type(egress).__name__}")
        self.egress = egress
        self._resolve = resolve
        self._ssl = httpx.create_ssl_context(trust_env=False)  # trust settings only: no connection state
        self.capabilities = self._build_capabilities()

    # -- public -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str | SecretValue] | None = None,
        params: dict[str, str] | None = None,
        body: str | None = None,
        json_body: Any = None,
        auth: SecretValue | tuple[str, SecretValue] | None = None,
    ) -> dict[str, Any]:
        """Send one request under the policy; see the module docstring for every check."""
        egress = self.egress
        method = method.upper()
        self._check_method(method)
        if body is not None and json_body is not None:
            raise CapabilityFault("ValueError", "http: give body= or json_body=, not both")
        if method in _BODILESS and (body is not None or json_body is not None):
            raise CapabilityFault("ValueError", f"http: a {method} request carries no body")
        try:
            target = httpx.URL(url)
            if params:
                target = target.copy_merge_params(params)
        except Exception as exc:
            raise CapabilityFault("ValueError", f"http: invalid url: {exc}") from None
        plain: list[tuple[str, str]] = []
        secret_headers: list[tuple[str, SecretValue, Callable[[str], str]]] = []  # (header, handle, format)
        for key, value in (headers or {}).items():
            if key.lower() in _FORBIDDEN_HEADERS:
                raise CapabilityFault("ValueError", f"http: header {key!r} is set by the host and cannot be given")
            if isinstance(value, SecretValue):
                secret_headers.append((key, value, _raw))
            else:
                plain.append((key, value))
        if auth is not None:
            if any(k.lower() == "authorization" for k, _ in plain):
                raise CapabilityFault("ValueError", "http: give auth= or an Authorization header, not both")
            if isinstance(auth, SecretValue):
                secret_headers.append(("Authorization", auth, _bearer))
            else:
                secret_headers.append(("Authorization", auth[1], _basic(auth[0])))
        content: bytes | None = None
        if json_body is not None:
            content = httpx.Request("POST", "http://x", json=json_body).read()
            plain.append(("Content-Type", "application/json"))
        elif body is not None:
            content = body.encode("utf-8")
        if content is not None and len(content) > egress.max_request_bytes:
            raise CapabilityFault(
                "ValueError", f"http: request body is {len(content)} bytes, over max_request_bytes={egress.max_request_bytes}"
            )

        revealed: dict[str, str] = {}
        deadline = time.monotonic() + call_timeout(egress.timeout)
        pool = self._new_pool(deadline)
        try:
            with _TRACE_GUARD.active(revealed):
                return self._exchange(pool, deadline, method, target, plain, secret_headers, content, revealed)
        finally:
            pool.close()

    def _exchange(
        self,
        pool: httpcore.ConnectionPool,
        deadline: float,
        method: str,
        target: httpx.URL,
        plain: list[tuple[str, str]],
        secret_headers: list[tuple[str, SecretValue, Callable[[str], str]]],
        content: bytes | None,
        revealed: dict[str, str],
    ) -> dict[str, Any]:
        egress = self.egress
        for hop in range(egress.max_redirects + 1):
            host, port = self._check_target(target, hop)
            request_headers = [("Accept-Encoding", "gzip, deflate"), ("User-Agent", "sandbox-http")] + plain
            for key, handle, render in secret_headers:
                if not handle.allows_host(host, port):
                    if hop == 0:
                        handle.reveal_for(host, port)  # raises PolicyDenied naming the rule
                    continue  # a redirect left the secret's scope: do not send it
                value = handle.reveal_for(host, port)
                if handle.name not in revealed:
                    revealed[handle.name] = value
                    _TRACE_GUARD.local.redactor = Redactor(revealed)
                request_headers.append((key, render(value)))
            response = self._send(pool, method, target, request_headers, content, deadline)
            location = response.headers.get("location")
            if response.status_code in _REDIRECTS and location and egress.max_redirects:
                response.close()
                if hop == egress.max_redirects:
                    break
                try:
                    target = target.join(location)
                except Exception as exc:
                    raise CapabilityFault("CapabilityError", f"http: invalid redirect location: {exc}") from None
                if response.status_code == 303 or (response.status_code in (301, 302) and method not in ("GET", "HEAD")):
                    method = "GET" if method != "HEAD" else "HEAD"
                    content = None
                    plain = [(k, v) for k, v in plain if k.lower() != "content-type"]
                    self._check_method(method)
                continue
            return self._read(response, deadline)
        raise CapabilityFault("CapabilityError", f"http: more than max_redirects={egress.max_redirects} redirects")

    def close(self) -> None:
        """Nothing to release (each call closes its own connections); kept for callers that close clients."""

    # -- internals ----------------------------------------------------------------------

    def _check_method(self, method: str) -> None:
        if method not in self.egress.methods:
            raise _deny(f"http: method {method} is not allowed (rule: methods={','.join(self.egress.methods)})")

    def _check_target(self, url: httpx.URL, hop: int) -> tuple[str, int]:
        egress = self.egress
        where = "redirect to " if hop else ""
        scheme = url.scheme
        if scheme not in egress.schemes:
            raise _deny(f"http: {where}scheme {scheme or '(none)'!r} is not allowed (rule: schemes={','.join(egress.schemes)})")
        if not url.host:
            raise CapabilityFault("ValueError", f"http: {where}url has no host")
        host = canonical_host(url.raw_host.decode("ascii"))
        port = url.port or (443 if scheme == "https" else 80)
        if not host_matches(host, port, egress.allow):
            raise _deny(f"http: {where}host {host}:{port} is not allowed (rule: allow={','.join(egress.allow)})")
        return host, port

    def _new_pool(self, deadline: float) -> httpcore.ConnectionPool:
        return httpcore.ConnectionPool(
            ssl_context=self._ssl,
            max_connections=1,
            max_keepalive_connections=1,  # redirect hops of this one call may share it; closed after the call
            network_backend=PinnedBackend(self.egress, self._resolve, deadline),
        )

    def _timed_out(self) -> CapabilityFault:
        return CapabilityFault("CapabilityError", f"http: timed out (timeout={self.egress.timeout:g}s, "
                               "or the run's remaining time if shorter)")

    def _send(
        self, pool: httpcore.ConnectionPool, method: str, url: httpx.URL, headers: list[tuple[str, str]], content: bytes | None, deadline: float
    ) -> httpx.Response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._timed_out()
        request = httpx.Request(method, url, headers=headers, content=content)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=content or b"",
            extensions={"timeout": {"connect": remaining, "read": remaining, "write": remaining, "pool": remaining}},
        )
        try:
            raw = pool.handle_request(core)
        except Refused as exc:
            raise _deny(f"http: {exc} (rule: private, loopback and metadata addresses are refused)") from None
        except httpcore.TimeoutException:
            raise self._timed_out() from None
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            raise CapabilityFault("CapabilityError", f"http: {type(exc).__name__}: {exc}") from None
        response = httpx.Response(status_code=raw.status, headers=raw.headers, stream=BodyStream(raw), request=request)
        return response

    def _read(self, response: httpx.Response, deadline: float) -> dict[str, Any]:
        try:
            data = self._body(response, deadline)
        finally:
            response.close()
        return {
            "status": response.status_code,
            "url": str(response.request.url),
            "headers": {key: value for key, value in response.headers.items()},
            "text": data.decode(_charset(response.charset_encoding), errors="replace"),
        }

    def _body(self, response: httpx.Response, deadline: float) -> bytes:
        """The decoded body, read as it streams; refused once the decoded size passes the limit.

        The raw (still encoded) bytes are capped too, and decompression output is bounded per
        step (``max_length``), so no chunk can expand past the limit in memory.
        """
        limit = self.egress.max_response_bytes
        codings = [c.strip().lower() for c in response.headers.get_list("content-encoding", split_commas=True)]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 1:
            raise CapabilityFault("CapabilityError", f"http: the response uses {len(codings)} content encodings "
                                  f"({', '.join(codings)}); at most one (gzip or deflate) is accepted")
        if codings and codings[0] not in _ENCODINGS:
            raise CapabilityFault("CapabilityError", f"http: content encoding {codings[0]!r} is not accepted (gzip or deflate)")
        decoder = _Inflater(_ENCODINGS[codings[0]]) if codings else None
        too_big = CapabilityFault("CapabilityError", f"http: response is larger than max_response_bytes={limit}")
        chunks: list[bytes] = []
        size = raw_size = 0
        try:
            for raw in response.iter_raw():
                raw_size += len(raw)
                if raw_size > 2 * limit + 65536:
                    raise too_big
                chunk = raw if decoder is None else decoder.feed(raw, limit - size + 1)
                size += len(chunk)
                if size > limit:
                    raise too_big
                if time.monotonic() > deadline:
                    raise self._timed_out()
                chunks.append(chunk)
        except httpcore.TimeoutException:
            raise self._timed_out() from None
        except (httpcore.NetworkError, httpcore.ProtocolError, zlib.error) as exc:
            raise CapabilityFault("CapabilityError", f"http: reading the response failed: {type(exc).__name__}") from None
        return b"".join(chunks)

    def _build_capabilities(self) -> list[Capability]:
        client = self

        def request(
            method: str,
            url: str,
            headers: dict[str, str | SecretValue] | None = None,
            params: dict[str, str] | None = None,
            body: str | None = None,
            json_body: Any = None,
            auth: SecretValue | tuple[str, SecretValue] | None = None,
        ) -> dict[str, Any]:
            """Send an HTTP request to an allowed host. Returns {"status", "url", "headers", "text"}.

            `auth=secrets.<name>` sends "Authorization: Bearer <value>" and `auth=(user, secrets.<name>)`
            Basic auth; a handle may also be a header value. Secrets are sent only to hosts in their scope.
            """
            return client.request(
                method, url, headers=headers, params=params, body=body, json_body=json_body, auth=auth
            )

        def get(
            url: str,
            headers: dict[str, str | SecretValue] | None = None,
            params: dict[str, str] | None = None,
            auth: SecretValue | tuple[str, SecretValue] | None = None,
        ) -> dict[str, Any]:
            """HTTP GET an allowed URL. Returns {"status", "url", "headers", "text"}."""
            return client.request("GET", url, headers=headers, params=params, auth=auth)

        def post(
            url: str,
            headers: dict[str, str | SecretValue] | None = None,
            body: str | None = None,
            json_body: Any = None,
            auth: SecretValue | tuple[str, SecretValue] | None = None,
        ) -> dict[str, Any]:
            """HTTP POST to an allowed URL (`body` text or `json_body` data). Returns {"status", "url", "headers", "text"}."""
            return client.request("POST", url, headers=headers, body=body, json_body=json_body, auth=auth)

        policy = f"Allowed hosts: {', '.join(self.egress.allow)}; methods: {', '.join(self.egress.methods)}."

        def declare(func: Callable[..., Any], name: str, action: Any = None) -> Capability:
            return Capability(func, name=name, description=inspect.cleandoc(func.__doc__ or "") + "\n" + policy,
                              action=action)

        caps = [declare(request, "http.request", action=_method_action)]
        if "GET" in self.egress.methods:
            caps.append(declare(get, "http.get"))
        if "POST" in self.egress.methods:
            caps.append(declare(post, "http.post"))
        return caps


class _Inflater:
    """One gzip or deflate stream, decoded with a bound on the output of every step."""

    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._inflate = zlib.decompressobj(wbits)
        self._started = False

    def feed(self, data: bytes, at_most: int) -> bytes:
        """Decode ``data``; returns at most ``at_most`` bytes (more output than that is cut, and
        the caller, seeing ``at_most`` bytes, refuses the response as too large)."""
        try:
            out = self._inflate.decompress(data, at_most)
        except zlib.error:
            if self._started or self._wbits != zlib.MAX_WBITS:
                raise
            self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)  # "deflate" sent raw, without the zlib header
            out = self._inflate.decompress(data, at_most)
        self._started = True
        return out


def _charset(label: str | None) -> str:
    """The codec for a response's charset label when it is on the fixed list, else UTF-8."""
    if not label:
        return "utf-8"
    return _CHARSETS.get(label.strip().lower().replace("_", "-"), "utf-8")


def _method_action(arguments: Any) -> str:
    """``http.request(method, ...)`` performs the action ``http.<method>`` (``http.get`` for GET),
    so policy rules on ``http.get`` hold for it too."""
    return "http." + str(arguments["method"]).strip().lower()


def _raw(value: str) -> str:
    return value


def _bearer(value: str) -> str:
    return "Bearer " + value


def _basic(user: str) -> Callable[[str], str]:
    def render(value: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{value}".encode()).decode("ascii")

    return render
