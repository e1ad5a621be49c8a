"""MAS's OPA policy, for the one decision the stand-in makes with it: the scope of a client_credentials grant.

MAS 1.22.0 evaluates policies/authorization_grant/authorization_grant.rego (compiled into
share/policy.wasm) with `policy.data` from the config as `data`. A client_credentials grant has no
user, so of the scopes that policy knows only these are allowed: the empty scope, `openid`, `email`,
`urn:mas:graphql:*`, and `urn:mas:admin` when the client's ID is listed in `data.admin_clients`
(compared with the client's ULID as MAS prints it: 26 upper-case characters). The C-S API, device and
`urn:synapse:admin:*` scopes need an interactive grant, so they are refused here.

Each violation is `{"msg": ...}`; OPA returns them as a set, which it orders by value, and the token
endpoint joins their messages with ", " into `error_description`. Not evaluated here: the
`data.requester` bans and the session limits (which do not apply without a user).
"""

STABLE_DEVICE, UNSTABLE_DEVICE = "urn:matrix:client:device:", "urn:matrix:org.matrix.msc2967.client:device:"
STABLE_API, UNSTABLE_API = "urn:matrix:client:api:", "urn:matrix:org.matrix.msc2967.client:api:"


def admin_clients(config: dict) -> list:
    data = (config.get("policy") or {}).get("data")
    clients = data.get("admin_clients") if isinstance(data, dict) else None
    return clients if isinstance(clients, list) else []


def client_credentials_violations(scope: str, client_id: str, admins: list) -> list[str]:
    """The violation messages for a client_credentials grant of `scope` (MAS's serialised Scope: sorted, space-joined)."""
    tokens = scope.split(" ")
    allowed = {"", "openid", "email", "urn:mas:graphql:*"}
    if client_id in admins:
        allowed.add("urn:mas:admin")
    violations = {f"scope '{token}' not allowed" for token in tokens if token not in allowed}
    for prefix in (STABLE_DEVICE, UNSTABLE_DEVICE):
        if sum(token.startswith(prefix) for token in tokens) > 1:
            violations.add("only one device scope is allowed at a time")
    has_device = any(t.startswith((STABLE_DEVICE, UNSTABLE_DEVICE)) for t in tokens)
    if has_device and not any(t.startswith((STABLE_API, UNSTABLE_API)) for t in tokens):
        violations.add("device scopes are only allowed when the client-server API scope is requested")
    stable = any(t.startswith("urn:matrix:client:") for t in tokens)
    if stable and any(t.startswith("urn:matrix:org.matrix.msc2967.client:") for t in tokens):
        violations.add("request cannot mix unstable and stable scopes")
    return sorted(violations)
