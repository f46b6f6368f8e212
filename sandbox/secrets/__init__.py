"""Secrets: host-held values that guest code reaches only through scoped, per-run handles.

A `Secret` says where its value comes from (a literal, an environment variable, a file or a
callable provider, read *at run start*) and its scope: the capabilities that may use it, the
destination hosts it may be sent to, a TTL and a maximum number of uses.

Per run, a `SecretBroker` reads the values, issues one unguessable token per secret (the guest
sees ``secrets.<name>``, an opaque handle that carries the token), resolves tokens that come
back in capability arguments, and revokes them all when the run ends. What a capability
receives for a handle is a `SecretValue`: a host-side object that reveals the value only when
the capability asks for it (`SecretValue.reveal`, `SecretValue.reveal_for`), checking the TTL
and use count at that moment. Every denial is a `CapabilityFault` ``PolicyDenied`` whose message
names the secret and the rule.

A `Redactor` replaces each value, and its base64 (at every byte alignment), base64url, hex,
percent-encoded, JSON- and repr-escaped forms, by ``[REDACTED:<name>]``. The sandbox applies it
to whole outputs (so a value printed in two pieces is still caught), return values, error
messages, and to capability results and faults before they reach the guest.

Annotate a capability parameter with `SecretValue` to accept a handle::

    @capability
    def deploy(token: SecretValue, service: str) -> str:
        call_deploy_api(service, token=token.reveal())
        return "deployed"

    Sandbox(capabilities=[deploy], secrets={"deploy_key": Secret(env="DEPLOY_KEY", capabilities=["deploy"])})

Handles never coerce to ``str``: a handle passed where a string is expected fails validation,
and a guest that formats a handle gets its description (name and scope), never the value.
"""

from __future__ import annotations

from sandbox.errors import SecretUnavailable
from sandbox.secrets._broker import SecretBroker, SecretValue
from sandbox.secrets._hosts import host_matches, normalize_host_pattern
from sandbox.secrets._redaction import Redactor
from sandbox.secrets._secret import Secret

# Used by the rest of the host package; not part of the public surface.
from sandbox.secrets._broker import new_token as new_token
from sandbox.secrets._hosts import canonical_host as canonical_host, scope_allows_capability as scope_allows_capability
from sandbox.secrets._redaction import NO_REDACTION as NO_REDACTION
from sandbox.secrets._secret import validate_secrets as validate_secrets

__all__ = [
    "Redactor",
    "Secret",
    "SecretBroker",
    "SecretUnavailable",
    "SecretValue",
    "host_matches",
    "normalize_host_pattern",
]
