"""The OAuth 2.0 authorization code grant with PKCE, as Element X uses MAS 1.22.0 (re-implemented from its
behaviour; no MAS code or template is copied here).

What a native client does, and where MAS 1.22.0 does it:
1. POST /oauth2/registration, JSON client metadata (MSC2966; crates/handlers/src/oauth2/registration.rs):
   serde's checks, `ClientMetadata::validate` (crates/oauth2-types/src/registration/mod.rs), the public suffix
   check, then the client registration policy (policies/client_registration/client_registration.rego, with
   `policy.data.client_registration.{allow_insecure_uris, allow_host_mismatch, allow_missing_client_uri}`).
   Refusals: 400 {"error": "invalid_request" | "invalid_client_metadata" | "invalid_redirect_uri",
   "error_description"}; the policy's messages joined with "; ". Then 201 with `client_id`,
   `client_id_issued_at`, `client_secret` for the client_secret_* methods, and the metadata. A public client
   registering the same metadata again gets the same client back (MAS's metadata digest).
2. GET /authorize?response_type=code&client_id&redirect_uri&scope&state&code_challenge&code_challenge_method
   (crates/handlers/src/oauth2/authorization/mod.rs): the client and its redirect URI are checked (a loopback
   redirect URI matches whatever its port, crates/data-model/src/oauth2/client.rs), a pending grant is stored
   with its code and PKCE challenge, then 303 to /login?kind=continue_authorization_grant&id=<grant> (no
   browser session) or to /consent/<grant>. Errors about the request itself go back to the client's redirect
   URI (`error=...&state=...`).
3. GET/POST /login (crates/handlers/src/views/login.rs, templates/pages/login.html): a form with `csrf`,
   `username` and `password` and a "Continue" button; the CSRF token lives in a `csrf` cookie for an hour
   (crates/axum-utils/src/csrf.rs); a good password starts a browser session (`session` cookie) and goes on to
   the consent page.
4. GET/POST /consent/<grant> (crates/handlers/src/oauth2/authorization/consent.rs, templates/pages/consent.html):
   the authorization grant policy (policies/authorization_grant/authorization_grant.rego) on the scope, then
   a page naming the client, its scopes and the user, with a "Continue" form (csrf); the POST fulfils the
   grant and sends the browser to `redirect_uri?code=...&state=...#`.
5. POST /oauth2/token (crates/handlers/src/oauth2/token.rs): `authorization_code` (the code once, within 10
   minutes of consent; PKCE checked as crates/oauth2-types/src/pkce.rs does: 400 invalid_grant "PKCE
   verification failed: ..."; a verifier without a challenge or the reverse: 400 invalid_request) gives an
   access token (`mat_`, `experimental.access_token_ttl`) and a refresh token (`mar_`), and creates the
   devices of the scope on the homeserver; `refresh_token` gives a new pair, the old refresh token consumed.
6. POST /oauth2/introspect (crates/handlers/src/oauth2/introspection.rs): an active OAuth 2.0 token reports
   its session's scope with the stable and unstable forms of the API and device scopes, so Synapse sees the
   device of `urn:matrix:org.matrix.msc2967.client:device:<ID>`.

Not done by the stand-in: ID tokens (`openid` is accepted and echoed in `scope`, but no `id_token` is returned
and the JWKS stays empty), the `form_post` response mode's page, login rate limits, `prompt=create`'s
registration, the session limits and requester bans of the policies, and MAS's recovery of a refresh token
whose successor was lost (a refresh token used twice is always refused here).
"""

import base64
import hashlib
import hmac
import html
import http.cookies
import json
import re
import secrets
import threading
import time
import urllib.parse

from . import crypto, log, store
from .database import transaction
from .homeserver import HomeserverError

TARGET = "mas_handlers::oauth2"
STABLE_API, UNSTABLE_API = "urn:matrix:client:api:*", "urn:matrix:org.matrix.msc2967.client:api:*"
STABLE_DEVICE, UNSTABLE_DEVICE = "urn:matrix:client:device:", "urn:matrix:org.matrix.msc2967.client:device:"
SYNAPSE_ADMIN = "urn:synapse:admin:*"
CSRF_TTL = 3600  # seconds: crates/axum-utils/src/csrf.rs refreshes the token for an hour at each render
CODE_TTL = 600  # seconds between consent and the code exchange (token.rs)
CODE_REUSE_GRACE = 20  # seconds: a code used again after that ends the session it gave (token.rs)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# A few public suffixes, for registration.rs's check that a URL's host is not one (MAS uses the whole Public
# Suffix List; the stand-in knows only these).
PUBLIC_SUFFIXES = {"com", "net", "org", "io", "dev", "app", "co.uk", "org.uk", "github.io"}
ALL_GRANT_TYPES = ["authorization_code", "refresh_token", "client_credentials",
                   "urn:ietf:params:oauth:grant-type:device_code"]  # fmt: skip


def _server():
    """server.py, imported when first needed (it imports this module)."""
    from . import server

    return server


def _error(status: int, error: str, description: str | None = None):
    return _server().oauth_error(status, error, description)


def _text(status: int, text: str):
    return _server().Reply(status, text, {"Content-Type": "text/plain; charset=utf-8"})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _alphanumeric(length: int) -> str:
    return "".join(secrets.choice(crypto.ALPHANUMERIC) for _ in range(length))


def ulid_time(ulid: str) -> int:
    """The Unix time (seconds) a ULID was made at: its first 48 bits are milliseconds."""
    number = 0
    for char in ulid[:10]:
        number = (number << 5) | crypto.CROCKFORD.index(char)
    return number // 1000


# ---------------------------------------------------------------- PKCE (crates/oauth2-types/src/pkce.rs)


class PkceError(ValueError):
    pass


def pkce_challenge(method: str, verifier: str) -> str:
    """The challenge a verifier gives under `method` (RFC 7636), after MAS's checks on the verifier."""
    if len(verifier) < 43:
        raise PkceError("code_verifier should be at least 43 characters long")
    if len(verifier) > 128:
        raise PkceError("code_verifier should be at most 128 characters long")
    if not re.fullmatch(r"[A-Za-z0-9\-._~]+", verifier):
        raise PkceError("code_verifier contains invalid characters")
    if method == "plain":
        return verifier
    if method == "S256":
        return _b64url(hashlib.sha256(verifier.encode()).digest())
    raise PkceError("unknown challenge method")


def pkce_verify(method: str, challenge: str, verifier: str) -> None:
    """Raises PkceError with MAS's message unless `verifier` answers `challenge`."""
    if not hmac.compare_digest(pkce_challenge(method, verifier).encode(), challenge.encode()):
        raise PkceError("challenge verification failed")


# ---------------------------------------------------------------- URLs


def _absolute_url(value) -> str | None:
    """A URL as the `url` crate would parse it (absolute, with a scheme), normalised a little as it does
    (scheme and host in lower case, `/` as the path of an http(s) URL without one); None if it is not one."""
    if not isinstance(value, str) or not re.match(r"[A-Za-z][A-Za-z0-9+.\-]*:", value) or " " in value:
        return None
    parts = urllib.parse.urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            return None
        netloc = parts.netloc
        host_start = netloc.rfind("@") + 1
        netloc = netloc[:host_start] + netloc[host_start:].lower()
        path = parts.path or "/"
        return urllib.parse.urlunsplit((scheme, netloc, path, parts.query, parts.fragment)) + (
            "#" if value.endswith("#") and not parts.fragment else ""
        )
    return scheme + value[len(parts.scheme) :]


_LABELS = r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"


def policy_uri_parts(url) -> dict | None:
    """What the registration policy reads of a URI: scheme, authority, host and port, path and query.

    The policy only knows URIs made of a lower-case scheme, an optional `//host[:port]` (DNS names in lower
    case, 127.0.0.1, 0.0.0.0 or [::1]; no user info), a path of unreserved characters and a simple query;
    for anything else (a fragment too) it has no parts, and every rule needing them fails.
    """
    if not isinstance(url, str):
        return None
    match = re.fullmatch(r"([a-z][a-z0-9+.\-]*):(//([^/?#]*))?([^?#]*)(\?[^#]*)?", url)
    if not match:
        return None
    scheme, has_authority, authority, path, query = match.groups()
    host = port = ""
    if has_authority:
        found = re.fullmatch(rf"({_LABELS}|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(?::([0-9]+))?", authority)
        if not found:
            return None
        host, port = found.group(1), found.group(2) or ""
    if path and not re.fullmatch(r"/[A-Za-z0-9/._~\-]*", path):
        return None
    if query and not re.fullmatch(r"\?[\-a-zA-Z0-9()@:%_+.~#?&/=]*", query):
        return None
    return {"scheme": scheme, "authority": authority or "", "host": host, "port": port, "path": path or "",
            "query": query or ""}  # fmt: skip


def host_is_public_suffix(url: str) -> bool:
    host = (urllib.parse.urlsplit(url).hostname or "").rstrip(".")
    return host in PUBLIC_SUFFIXES or host.lstrip(".") in PUBLIC_SUFFIXES and host.startswith(".")


def redirect_uri_matches(uri: str, registered: list[str]) -> bool:
    """crates/data-model/src/oauth2/client.rs: exact match, or for a loopback host, a match once the port is dropped."""
    parts = urllib.parse.urlsplit(uri)
    if parts.hostname in ("localhost", "127.0.0.1", "::1") and parts.port is not None:
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = (parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else "") + host
        if urllib.parse.urlunsplit(parts._replace(netloc=netloc)) in registered:
            return True
    return uri in registered


# ---------------------------------------------------------------- client registration


METADATA_URLS = ("client_uri", "logo_uri", "policy_uri", "tos_uri", "jwks_uri", "initiate_login_uri",
                 "sector_identifier_uri")  # fmt: skip
METADATA_STRINGS = ("application_type", "client_name", "token_endpoint_auth_method", "token_endpoint_auth_signing_alg",
                    "id_token_signed_response_alg", "userinfo_signed_response_alg", "software_id",
                    "software_version", "subject_type")  # fmt: skip
METADATA_URL_LISTS = ("redirect_uris", "request_uris", "post_logout_redirect_uris")
METADATA_STRING_LISTS = ("response_types", "grant_types", "contacts", "default_acr_values")


class MetadataError(Exception):
    def __init__(self, error: str, description: str | None = None):
        super().__init__(description or error)
        self.error, self.description = error, description


def read_metadata(body) -> dict:
    """serde's reading of ClientMetadata: the fields the stand-in knows, type-checked and URLs normalised.

    A field of the wrong type is a JSON data error (400 invalid_client_metadata with serde's message)."""
    if not isinstance(body, dict):
        raise MetadataError("invalid_client_metadata", "invalid type: expected struct ClientMetadataSerdeHelper")
    metadata = {}
    for name, value in body.items():
        if "#" in name or value is None:
            continue  # localised variants (`client_name#fr`) are not kept by the stand-in
        if name in METADATA_URLS:
            url = _absolute_url(value)
            if url is None:
                raise MetadataError("invalid_client_metadata", f"{name}: relative URL without a base")
            metadata[name] = url
        elif name in METADATA_URL_LISTS or name in METADATA_STRING_LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise MetadataError("invalid_client_metadata", f"{name}: invalid type: expected a sequence")
            if name in METADATA_URL_LISTS:
                urls = [_absolute_url(v) for v in value]
                if None in urls:
                    raise MetadataError("invalid_client_metadata", f"{name}: relative URL without a base")
                value = urls
            metadata[name] = value
        elif name in METADATA_STRINGS:
            if not isinstance(value, str):
                raise MetadataError("invalid_client_metadata", f"{name}: invalid type: expected a string")
            metadata[name] = value
        elif name in ("jwks",):
            metadata[name] = value
        elif name in ("require_auth_time", "require_signed_request_object", "require_pushed_authorization_requests"):
            if not isinstance(value, bool):
                raise MetadataError("invalid_client_metadata", f"{name}: invalid type: expected a boolean")
            metadata[name] = value
    # ClientMetadata::sorted: every list sorted, so the digest does not depend on the order.
    for name in METADATA_URL_LISTS + METADATA_STRING_LISTS:
        if name in metadata:
            metadata[name] = sorted(metadata[name])
    return metadata


def grant_types(metadata: dict) -> list[str]:
    return metadata.get("grant_types", ["authorization_code"])


def validate_metadata(metadata: dict) -> None:
    """ClientMetadata::validate (crates/oauth2-types/src/registration/mod.rs), raising MetadataError."""
    grants = grant_types(metadata)
    implicit, code = "implicit" in grants, "authorization_code" in grants
    uris = metadata.get("redirect_uris")
    if uris is not None:
        if any("#" in uri for uri in uris):
            raise MetadataError("invalid_redirect_uri")
    elif code or implicit:
        raise MetadataError("invalid_redirect_uri")
    response_types = metadata.get("response_types", ["code"] if code or implicit else [])
    for response_type in response_types:
        parts = set(response_type.split(" "))
        if not parts <= {"code", "id_token", "token", "none"}:
            raise MetadataError("invalid_client_metadata", f"unknown response type {response_type!r}")
        has_code, has_id_token, has_token = "code" in parts, "id_token" in parts, "token" in parts
        coherent = (
            (has_code and implicit and code)
            or (not has_code and implicit)
            or (code and not has_id_token and not has_token)
            or (not has_code and not has_id_token and not has_token)
        )
        if not coherent:
            raise MetadataError("invalid_client_metadata",
                                f"'{response_type}' response type not compatible with grant types")  # fmt: skip
    if "jwks_uri" in metadata and "jwks" in metadata:
        raise MetadataError("invalid_client_metadata", "jwks_uri and jwks are mutually exclusive")
    for name in ("sector_identifier_uri", "initiate_login_uri"):
        if name in metadata and not metadata[name].startswith("https:"):
            raise MetadataError("invalid_client_metadata", f"{name}'s URL doesn't use a https scheme: {metadata[name]}")
    method = metadata.get("token_endpoint_auth_method", "client_secret_basic")
    if method == "private_key_jwt" and "jwks_uri" not in metadata and "jwks" not in metadata:
        raise MetadataError("invalid_client_metadata", "missing JWK Set for token auth method")
    alg = metadata.get("token_endpoint_auth_signing_alg")
    if alg == "none":
        raise MetadataError("invalid_client_metadata", "none signing alg unauthorized for token_endpoint")
    if alg is None and method in ("private_key_jwt", "client_secret_jwt"):
        raise MetadataError("invalid_client_metadata", "token_endpoint missing auth signing algorithm")
    for name in ("client_uri", "logo_uri", "policy_uri", "tos_uri", "initiate_login_uri"):
        if name in metadata and host_is_public_suffix(metadata[name]):
            raise MetadataError("invalid_client_metadata", f"{name} is not using a valid domain")
    for uri in metadata.get("redirect_uris", []):
        if host_is_public_suffix(uri):
            raise MetadataError("invalid_redirect_uri", "redirect_uri is not using a valid domain")


def _is_subdomain(host: str, candidate: str) -> bool:
    """`candidate` is `host` or under it, label by label."""
    want, got = host.split(".")[::-1], candidate.split(".")[::-1]
    return got[: len(want)] == want


def registration_violations(metadata: dict, data: dict) -> list[str]:
    """The messages of policies/client_registration/client_registration.rego's violations, in OPA's order
    (a set of objects, ordered by value). `data` is policy.data.client_registration."""
    insecure_ok = bool(data.get("allow_insecure_uris"))
    mismatch_ok = bool(data.get("allow_host_mismatch"))
    missing_ok = bool(data.get("allow_missing_client_uri"))
    client = policy_uri_parts(metadata.get("client_uri"))

    def secure(url) -> bool:
        parts = policy_uri_parts(url)
        return insecure_ok or (
            parts is not None and parts["scheme"] == "https" and parts["host"] not in (*LOOPBACK_HOSTS, "0.0.0.0")
        )

    def same_host(url) -> bool:
        if mismatch_ok or missing_ok:  # the policy's missing-client_uri rule looks at `data`, so always holds
            return True
        parts = policy_uri_parts(url)
        return client is not None and parts is not None and _is_subdomain(client["host"], parts["host"])

    def native_redirect(url) -> bool:
        parts = policy_uri_parts(url)
        if parts is None:
            return False
        if parts["scheme"] == "http":
            return parts["host"] in LOOPBACK_HOSTS
        if parts["scheme"] == "https" or parts["authority"] or client is None:
            return False
        # A private-use scheme names the client's host in reverse: io.element.app for https://app.element.io/.
        reversed_host = client["host"].split(".")[::-1]
        return bool(client["host"]) and parts["scheme"].split(".")[: len(reversed_host)] == reversed_host

    violations = []
    if "client_uri" not in metadata and not missing_ok:
        violations.append(("missing client_uri",))
    if "client_uri" in metadata and not secure(metadata["client_uri"]):
        violations.append(("invalid client_uri",))
    for name in ("tos_uri", "policy_uri", "logo_uri"):
        if name in metadata:
            if not secure(metadata[name]):
                violations.append((f"invalid {name}",))
            if not same_host(metadata[name]):
                violations.append((f"{name} not on the same host as the client_uri",))
    grants = metadata.get("grant_types", ["authorization_code"])
    if "client_credentials" in grants and metadata.get("token_endpoint_auth_method") == "none":
        violations.append(("client_credentials grant_type requires some form of client authentication",))
    needs_redirects = "authorization_code" in grants or "implicit" in grants
    uris = metadata.get("redirect_uris")
    if needs_redirects and uris is None:
        violations.append(("missing redirect_uris",))
    if needs_redirects and uris == []:
        violations.append(("invalid redirect_uris: it must have at least one redirect_uri",))
    for uri in uris or []:
        native = metadata.get("application_type") == "native" and native_redirect(uri)
        if not native and not (secure(uri) and same_host(uri)):
            violations.append(("invalid redirect_uri", uri))
    return [v[0] for v in sorted(set(violations))]


def register(handler) -> None:
    """POST /oauth2/registration."""
    raw = handler.body()
    kind = (handler.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    cors = {"Access-Control-Allow-Origin": "*"}
    if not re.fullmatch(r"application/(json|[^/]+\+json)", kind):
        raise _server().Reply(400, {"error": "invalid_request"}, cors)
    try:
        body = json.loads(raw)
    except ValueError:
        raise _server().Reply(400, {"error": "invalid_request"}, cors) from None
    app = handler.app
    try:
        metadata = read_metadata(body)
        if not app.device_code_grant_enabled and "urn:ietf:params:oauth:grant-type:device_code" in metadata.get(
            "grant_types", []
        ):
            log.warn(TARGET, "A client requested the device_code grant type but it's disabled, dropping it")
            metadata["grant_types"].remove("urn:ietf:params:oauth:grant-type:device_code")
        validate_metadata(metadata)
        data = ((app.config.get("policy") or {}).get("data") or {}).get("client_registration") or {}
        violations = registration_violations(metadata, data if isinstance(data, dict) else {})
        if violations:
            code = "invalid_redirect_uri" if any("redirect_uri" in v for v in violations) else "invalid_client_metadata"
            raise MetadataError(code, "; ".join(violations))
    except MetadataError as error:
        log.info(TARGET, "Client registration refused", error=error.error)
        body = {"error": error.error, **({"error_description": error.description} if error.description else {})}
        raise _server().Reply(400, body, cors) from None
    method = metadata.get("token_endpoint_auth_method", "client_secret_basic")
    secret = _alphanumeric(20) if method in ("client_secret_basic", "client_secret_post", "client_secret_jwt") else None
    digest = None if secret else hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()
    with app.pool.connection() as conn:
        client = store.one(conn, "SELECT client_id FROM oauth2_clients WHERE metadata_digest = :d", d=digest) if (
            digest
        ) else None  # fmt: skip
        if client is not None:
            client_id = client["client_id"]
            log.info(TARGET, "Reusing existing client", client__id=client_id)
        else:
            client_id = crypto.ulid()
            conn.run(
                "INSERT INTO oauth2_clients (client_id, client_auth_method, encrypted_client_secret, client_name,"
                " is_static, metadata_digest, metadata) VALUES (:c, :m, :s, :n, FALSE, :d, :j)",
                c=client_id, m=method, s=crypto.encrypt(app.key, secret) if secret else None,
                n=metadata.get("client_name"), d=digest, j=json.dumps(metadata),
            )  # fmt: skip
            log.info(TARGET, "Registered new client", client__id=client_id)
    kept = ("redirect_uris", "grant_types", "application_type", "client_name", "logo_uri", "client_uri", "policy_uri",
            "tos_uri", "jwks_uri", "jwks", "id_token_signed_response_alg", "userinfo_signed_response_alg",
            "token_endpoint_auth_method", "token_endpoint_auth_signing_alg", "initiate_login_uri")  # fmt: skip
    answer = {"client_id": client_id, **({"client_secret": secret} if secret else {}),
              "client_id_issued_at": ulid_time(client_id)}  # fmt: skip
    answer.update({name: metadata[name] for name in kept if name in metadata})
    answer.setdefault("redirect_uris", [])
    answer.setdefault("grant_types", grant_types(metadata))
    answer.setdefault("token_endpoint_auth_method", method)
    handler.send(201, answer, cors)


def client_metadata(client: dict) -> dict:
    """A stored client's metadata; static clients (from the config) may use every grant type."""
    if client.get("metadata"):
        return json.loads(client["metadata"])
    return {"grant_types": ALL_GRANT_TYPES, "redirect_uris": []}


# ---------------------------------------------------------------- cookies: the browser session and CSRF


def _sign(key: bytes, value: dict) -> str:
    payload = _b64url(json.dumps(value, separators=(",", ":")).encode())
    return payload + "." + _b64url(hmac.new(key, b"cookie:" + payload.encode(), hashlib.sha256).digest())


def _unsign(key: bytes, cookie: str | None) -> dict | None:
    if not cookie or "." not in cookie:
        return None
    payload, _, tag = cookie.partition(".")
    expected = _b64url(hmac.new(key, b"cookie:" + payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(tag, expected):
        return None
    try:
        value = json.loads(_unb64url(payload))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _cookies(handler) -> dict:
    jar = http.cookies.SimpleCookie()
    try:
        jar.load(handler.headers.get("Cookie") or "")
    except http.cookies.CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def _set_cookie(handler, name: str, value: dict) -> str:
    """A Set-Cookie value as MAS's cookie jar makes them (crates/axum-utils/src/cookies.rs): HttpOnly, SameSite=Lax,
    Secure on an https public_base, on public_base's path; signed here (MAS encrypts them)."""
    base = urllib.parse.urlsplit(handler.app.public)
    secure = "; Secure" if base.scheme == "https" else ""
    return f"{name}={_sign(handler.app.key, value)}; Path={base.path or '/'}; HttpOnly; SameSite=Lax{secure}"


def csrf_token(handler) -> tuple[str, str]:
    """The form's CSRF token and the `csrf` cookie to set: the cookie's token if still valid, else a new one."""
    current = _unsign(handler.app.key, _cookies(handler).get("csrf"))
    now = time.time()
    token = current["token"] if current and current.get("expires", 0) > now else _b64url(secrets.token_bytes(32))
    return token, _set_cookie(handler, "csrf", {"token": token, "expires": now + CSRF_TTL})


def csrf_ok(handler, form: dict) -> bool:
    current = _unsign(handler.app.key, _cookies(handler).get("csrf"))
    if not current or current.get("expires", 0) <= time.time() or not isinstance(form.get("csrf"), str):
        return False
    return hmac.compare_digest(current["token"].encode(), form["csrf"].encode())


def browser_session(handler, conn) -> dict | None:
    """The active browser session of the `session` cookie, with its (valid) user."""
    value = _unsign(handler.app.key, _cookies(handler).get("session"))
    if not value or not isinstance(value.get("current"), str):
        return None
    return store.one(
        conn,
        "SELECT b.browser_session_id, u.* FROM browser_sessions b JOIN users u USING (user_id)"
        " WHERE b.browser_session_id = :b AND b.finished_at IS NULL AND u.locked_at IS NULL"
        " AND u.deactivated_at IS NULL",
        b=value["current"],
    )


# ---------------------------------------------------------------- pages


def _route(handler, path: str, query: dict | None = None) -> str:
    """A relative URL of one of MAS's routes under public_base's path (mas_router's UrlBuilder::redirect)."""
    base = urllib.parse.urlsplit(handler.app.public).path.rstrip("/")
    return base + path + ("?" + urllib.parse.urlencode(query) if query else "")


def _redirect(location: str, cookie: str | None = None):
    headers = {"Location": location}
    if cookie:
        headers["Set-Cookie"] = cookie
    return _server().Reply(303, "", headers)


def _html(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title></head><body><main>{body}"
            "<footer><small>matrix-authentication-service test double (tests/support/mas_standin)</small></footer>"
            "</main></body></html>\n")  # fmt: skip


def _post_auth_action(query: dict) -> dict | None:
    """mas_router's PostAuthAction from a query (`kind` and `id`); only the grant continuation is kept."""
    if query.get("kind") == "continue_authorization_grant" and query.get("id"):
        try:
            return {"kind": "continue_authorization_grant", "id": crypto.parse_ulid(query["id"])}
        except ValueError:
            return None
    return None


def _go_next(handler, action: dict | None) -> str:
    return _route(handler, f"/consent/{action['id']}") if action else _route(handler, "/")


def _verify_password(app, user: dict, password: str):
    """views/login.rs: verify_and_upgrade by the stored scheme version (passwords.py); an unknown version fails."""
    try:
        return app.passwords.verify_and_upgrade(user.get("password_version"), password, user["hashed_password"])
    except Exception as error:  # passwords.SchemeError
        log.error(TARGET, f"Failed to verify the password: {error}", user__id=user["user_id"])
        return False, None


def login_page(handler, error: str | None = None, username: str = "", status: int = 200) -> None:
    """GET /login: with a browser session, on to what comes next; else the form (and the upstream providers)."""
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(handler.path).query))
    action = _post_auth_action(query)
    app = handler.app
    with app.pool.connection() as conn:
        if error is None and browser_session(handler, conn) is not None:
            raise _redirect(_go_next(handler, action))
        providers = store.enabled_providers(conn)
    token, cookie = csrf_token(handler)
    params = "?" + urllib.parse.urlencode(action) if action else ""
    hint = query.get("login_hint", "")
    if not username and hint.startswith("mxid:"):
        username = app.homeserver.localpart(hint[len("mxid:") :]) or ""
    parts = ["<h1>Sign in</h1>"]
    if error:
        parts.append(f'<p class="error" role="alert">{html.escape(error)}</p>')
    if app.passwords_enabled:
        parts.append(
            f'<form method="POST"><input type="hidden" name="csrf" value="{html.escape(token)}">'
            f'<label for="username">Username</label><input id="username" name="username" type="text"'
            f' autocomplete="username" value="{html.escape(username)}" required>'
            '<label for="password">Password</label><input id="password" name="password" type="password"'
            ' autocomplete="password" required>'
            '<button type="submit">Continue</button></form>'
        )
    links = "".join(
        # templates/pages/login.html: a link to /upstream/authorize/<id>, "Continue with <name>", escaped as
        # minijinja escapes HTML (a slash too: href="&#x2f;upstream&#x2f;authorize&#x2f;<id>").
        f'<li><a href="{minijinja_escape(_route(handler, "/upstream/authorize/" + p["id"]) + params)}">'
        f"Continue with {minijinja_escape(p['human_name'] or p['id'])}</a></li>"
        for p in providers
    )
    parts.append(f"<ul>{links}</ul>")
    if app.password_registration_enabled:
        parts.append(f'<a href="{html.escape(_route(handler, "/register/password") + params)}">Create account</a>')
    handler.send(status, _html("Sign in", "".join(parts)), {"Set-Cookie": cookie})


def minijinja_escape(text: str) -> str:
    """minijinja's HTML auto-escaping (MAS's templates): & < > " ' and / as entities."""
    return html.escape(text).replace("/", "&#x2f;")


def login_post(handler) -> None:
    """POST /login (views/login.rs): CSRF, then the username (a Matrix ID of this server reads as its localpart)
    and password; a bad one shows the form again with "Invalid credentials"."""
    app = handler.app
    form = dict(urllib.parse.parse_qsl(handler.body().decode("utf-8", "replace"), keep_blank_values=True))
    if not app.passwords_enabled:
        raise _server().Reply(405, "")
    if not csrf_ok(handler, form):
        raise _server().Reply(500, _html("Error", "<h1>Something went wrong</h1><p>CSRF token mismatch</p>"))
    username, password = form.get("username", ""), form.get("password", "")
    if not username or not password:
        return login_page(handler, "This field is required", username)
    localpart = app.homeserver.localpart(username) or username
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(handler.path).query))
    with app.pool.connection() as conn:
        user = store.find_user(conn, localpart)
        verified, upgraded = (False, None) if user is None else _verify_password(app, user, password)
        if not verified:
            log.warn(TARGET, "Password login failed")
            return login_page(handler, "Invalid credentials", username)
        if upgraded is not None:
            store.upgrade_password(conn, user["user_id"], *upgraded)
        if user["deactivated_at"] is not None or user["locked_at"] is not None:
            log.warn(TARGET, "User is locked or deactivated", user__id=user["user_id"])
            raise _server().Reply(200, _html("Account inactive", "<h1>This account is not active</h1>"))
        session_id = crypto.ulid()
        conn.run("INSERT INTO browser_sessions (browser_session_id, user_id, user_agent) VALUES (:b, :u, :a)",
                 b=session_id, u=user["user_id"], a=handler.headers.get("User-Agent"))  # fmt: skip
    log.info(TARGET, "Browser session started with a password", user__id=user["user_id"],
             browser_session__id=session_id)  # fmt: skip
    cookie = _set_cookie(handler, "session", {"current": session_id})
    raise _redirect(_go_next(handler, _post_auth_action(query)), cookie)


# ---------------------------------------------------------------- the authorization endpoint


def _parse_query_field(query: dict, name: str) -> str:
    if name not in query:
        raise _text(400, f"Failed to deserialize query string: missing field `{name}`")
    return query[name]


def _callback(redirect_uri: str, mode: str, state: str | None, params: dict):
    """authorization/callback.rs: the answer back at the client's redirect URI, with `state`."""
    params = {**params, **({"state": state} if state is not None else {})}
    if mode == "fragment":
        return _redirect(redirect_uri.split("#")[0] + "#" + urllib.parse.urlencode(params))
    if mode == "form_post":
        inputs = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in params.items())  # fmt: skip
        page = _html("Redirecting", f'<form method="post" action="{html.escape(redirect_uri)}">{inputs}'
                     '<button type="submit">Continue</button></form>')  # fmt: skip
        return _server().Reply(200, page)
    parts = urllib.parse.urlsplit(redirect_uri)
    existing = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = urllib.parse.urlencode(existing + list(params.items()))
    return _redirect(urllib.parse.urlunsplit(parts._replace(query=query, fragment="")) + "#")


def authorize(handler) -> None:
    """GET /authorize."""
    app = handler.app
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(handler.path).query, keep_blank_values=True))
    response_type = _parse_query_field(query, "response_type")
    client_id = _parse_query_field(query, "client_id")
    scope_value = _parse_query_field(query, "scope")
    kinds = set(response_type.split(" "))
    if not kinds <= {"code", "id_token", "token", "none"}:
        raise _text(400, "Failed to deserialize query string: invalid response type")
    tokens = scope_value.split(" ")
    if not all(re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", t) for t in tokens):
        raise _text(400, "Failed to deserialize query string: Invalid scope format")
    scope = " ".join(sorted(set(tokens)))
    mode = query.get("response_mode")
    if mode is not None and mode not in ("query", "fragment", "form_post"):
        raise _text(400, "Failed to deserialize query string: unknown variant")
    prompt = set(query.get("prompt", "").split())
    with app.pool.connection() as conn:
        client = store.find_client(conn, client_id)
        if client is None:
            raise _text(400, "could not find client")
        metadata = client_metadata(client)
        registered = metadata.get("redirect_uris") or []
        asked = query.get("redirect_uri")
        if not registered:
            raise _text(400, "invalid redirect uri")
        if asked is None:
            if len(registered) != 1:
                raise _text(400, "invalid redirect uri")
            redirect_uri = registered[0]
        else:
            asked_url = _absolute_url(asked)
            if asked_url is None:
                raise _text(400, "Failed to deserialize query string: redirect_uri: relative URL without a base")
            if not redirect_uri_matches(asked_url, registered):
                raise _text(400, "invalid redirect uri")
            redirect_uri = asked_url
        if "token" in kinds or "id_token" in kinds:
            if mode == "query":
                raise _text(400, "invalid response mode")
            mode = mode or "fragment"
        mode = mode or "query"
        if "#" in redirect_uri:
            raise _text(400, "invalid parameters")
        state = query.get("state")

        def back(error: str):
            return _callback(redirect_uri, mode, state, {"error": error})

        if "request" in query:
            raise back("request_not_supported")
        if "request_uri" in query:
            raise back("request_uri_not_supported")
        if "token" in kinds:
            raise back("unsupported_response_type")
        grants = metadata.get("grant_types", ["authorization_code"])
        if "id_token" in kinds and "implicit" not in grants:
            raise back("unauthorized_client")
        if "registration" in query:
            raise back("registration_not_supported")
        if "none" in prompt:
            raise back("login_required")
        pkce = None
        if "code_challenge" in query and "code_challenge_method" in query:
            pkce = (query["code_challenge"], query["code_challenge_method"])
        code = None
        if "code" in kinds:
            if "authorization_code" not in grants:
                raise back("unauthorized_client")
            code = _alphanumeric(32)
        elif pkce is not None:
            raise back("invalid_request")
        session = browser_session(handler, conn)
        grant_id = crypto.ulid()
        conn.run(
            "INSERT INTO oauth2_authorization_grants (oauth2_authorization_grant_id, client_id, redirect_uri, scope,"
            " state, nonce, response_mode, code, code_challenge, code_challenge_method, login_hint)"
            " VALUES (:g, :c, :r, :s, :st, :n, :m, :code, :cc, :ccm, :h)",
            g=grant_id, c=client["client_id"], r=redirect_uri, s=scope, st=state, n=query.get("nonce"), m=mode,
            code=code, cc=pkce[0] if pkce else None, ccm=pkce[1] if pkce else None, h=query.get("login_hint"),
        )  # fmt: skip
    log.info(TARGET, "Authorization grant started", client__id=client["client_id"], grant__id=grant_id)
    action = {"kind": "continue_authorization_grant", "id": grant_id}
    if session is not None:
        raise _redirect(_route(handler, f"/consent/{grant_id}"))
    if "create" in prompt:
        raise _redirect(_route(handler, "/register", action))
    if query.get("login_hint"):
        action["login_hint"] = query["login_hint"]
    raise _redirect(_route(handler, "/login", action))


# ---------------------------------------------------------------- the authorization grant policy


def grant_violations(scope: str, grant_type: str, user: dict | None, data: dict) -> list[str]:
    """policies/authorization_grant/authorization_grant.rego for an interactive grant (authorization_code or
    device code) of `user`; `data` is policy.data (admin_users). OPA's order: by value."""
    interactive = grant_type in ("authorization_code", "urn:ietf:params:oauth:grant-type:device_code")
    admin = user is not None and (user["username"] in (data.get("admin_users") or []) or user["can_request_admin"])
    device_id = r"[A-Za-z0-9._~!$&'()*+,;=:@/\-]{10,}"

    def allowed(token: str) -> bool:
        if token in ("", "openid", "email", "urn:mas:graphql:*"):
            return True
        if token in (SYNAPSE_ADMIN, "urn:mas:admin"):
            return interactive and admin
        if token in (STABLE_API, UNSTABLE_API):
            return interactive
        if token.startswith((STABLE_DEVICE, UNSTABLE_DEVICE)):
            return interactive and re.fullmatch(device_id, token.split(":device:", 1)[1]) is not None
        return False

    tokens = scope.split(" ")
    violations = {f"scope '{t}' not allowed" for t in tokens if not allowed(t)}
    for prefix in (STABLE_DEVICE, UNSTABLE_DEVICE):
        if len({t for t in tokens if t.startswith(prefix)}) > 1:
            violations.add("only one device scope is allowed at a time")
    if any(t.startswith((STABLE_DEVICE, UNSTABLE_DEVICE)) for t in tokens) and not any(
        t.startswith(("urn:matrix:client:api:", "urn:matrix:org.matrix.msc2967.client:api:")) for t in tokens
    ):
        violations.add("device scopes are only allowed when the client-server API scope is requested")
    if any(t.startswith("urn:matrix:client:") for t in tokens) and any(
        t.startswith("urn:matrix:org.matrix.msc2967.client:") for t in tokens
    ):
        violations.add("request cannot mix unstable and stable scopes")
    return sorted(violations)


def devices_of(scope: str) -> list[str]:
    """The device IDs of a scope's device tokens (mas_data_model's Device::from_scope_token), once each."""
    return sorted(
        {t.split(":device:", 1)[1] for t in scope.split(" ") if t.startswith((STABLE_DEVICE, UNSTABLE_DEVICE))}
    )


# ---------------------------------------------------------------- consent


def _grant(conn, grant_id: str) -> dict:
    try:
        grant_id = crypto.parse_ulid(urllib.parse.unquote(grant_id))
    except ValueError:
        raise _text(400, "Invalid URL: Cannot parse grant ID") from None
    grant = store.one(conn, "SELECT * FROM oauth2_authorization_grants WHERE oauth2_authorization_grant_id = :g",
                      g=grant_id)  # fmt: skip
    if grant is None:
        raise _text(404, "Authorization grant not found")
    return grant


def _pending(grant: dict) -> None:
    if grant["fulfilled_at"] is not None or grant["cancelled_at"] is not None or grant["exchanged_at"] is not None:
        raise _text(409, f"Authorization grant {grant['oauth2_authorization_grant_id']} is not pending")


def _policy_data(handler) -> dict:
    data = (handler.app.config.get("policy") or {}).get("data")
    return data if isinstance(data, dict) else {}


def _violations_page(handler, grant: dict, violations: list[str], token: str) -> str:
    items = "".join(f"<li>{html.escape(v)}</li>" for v in violations)
    return _html("Authorization denied", f"<h1>This authorization request was denied by the policy</h1><ul>{items}</ul>"
                 f"<p>Client {html.escape(grant['client_id'])}</p>")  # fmt: skip


def consent_page(handler, grant_id: str) -> None:
    """GET /consent/<grant>."""
    app = handler.app
    with app.pool.connection() as conn:
        session = browser_session(handler, conn)
        grant = _grant(conn, grant_id)
        client = store.find_client(conn, grant["client_id"])
        _pending(grant)
        action = {"kind": "continue_authorization_grant", "id": grant["oauth2_authorization_grant_id"]}
        if session is None:
            raise _redirect(_route(handler, "/login", action))
    token, cookie = csrf_token(handler)
    violations = grant_violations(grant["scope"], "authorization_code", session, _policy_data(handler))
    if violations:
        return handler.send(200, _violations_page(handler, grant, violations, token), {"Set-Cookie": cookie})
    metadata = client_metadata(client)
    name = html.escape(client["client_name"] or client["client_id"])
    uri = html.escape(urllib.parse.urlsplit(metadata.get("client_uri", "")).hostname or "<no client_uri provided>")
    scopes = "".join(f"<li>{html.escape(t)}</li>" for t in grant["scope"].split(" ") if t not in ("openid", ""))
    cancel = urllib.parse.urlsplit(grant["redirect_uri"])
    cancel_query = urllib.parse.urlencode(
        urllib.parse.parse_qsl(cancel.query)
        + [("error", "access_denied")]
        + ([("state", grant["state"])] if grant["state"] is not None else [])
    )
    cancel_url = urllib.parse.urlunsplit(cancel._replace(query=cancel_query))
    body = (
        f"<h1>Continue to {name}</h1><p>This will set up {name} ({uri}) with your account on "
        f"{html.escape(app.homeserver.homeserver)}.</p>"
        f'<p>{name} wants to:</p><ul class="consent-scope-list">{scopes}</ul>'
        f'<section><p class="user">{html.escape(session["username"])}</p>'
        f'<p class="mxid">{html.escape(app.homeserver.mxid(session["username"]))}</p></section>'
        f'<form method="POST"><input type="hidden" name="csrf" value="{html.escape(token)}">'
        '<button type="submit">Continue</button></form>'
        f'<a href="{html.escape(cancel_url)}">Cancel</a>'
    )
    handler.send(
        200, _html(f"Continue to {client['client_name'] or client['client_id']}", body), {"Set-Cookie": cookie}
    )


def consent_post(handler, grant_id: str) -> None:
    """POST /consent/<grant>: CSRF (400), the browser session (else the login page), a pending grant (409), the
    policy; then the grant is fulfilled and the browser goes back to the client with the code."""
    app = handler.app
    form = dict(urllib.parse.parse_qsl(handler.body().decode("utf-8", "replace"), keep_blank_values=True))
    if not csrf_ok(handler, form):
        raise _text(400, "CSRF token mismatch")
    with app.pool.connection() as conn:
        session = browser_session(handler, conn)
        grant = _grant(conn, grant_id)
        if session is None:
            action = {"kind": "continue_authorization_grant", "id": grant["oauth2_authorization_grant_id"]}
            raise _redirect(_route(handler, "/login", action))
        _pending(grant)
        violations = grant_violations(grant["scope"], "authorization_code", session, _policy_data(handler))
        if violations:
            token, cookie = csrf_token(handler)
            return handler.send(200, _violations_page(handler, grant, violations, token), {"Set-Cookie": cookie})
        updated = conn.run(
            "UPDATE oauth2_authorization_grants SET fulfilled_at = now(), browser_session_id = :b"
            " WHERE oauth2_authorization_grant_id = :g AND fulfilled_at IS NULL AND cancelled_at IS NULL RETURNING 1",
            b=session["browser_session_id"], g=grant["oauth2_authorization_grant_id"],
        )  # fmt: skip
        if not updated:
            raise _text(409, f"Authorization grant {grant['oauth2_authorization_grant_id']} is not pending")
    log.info(TARGET, "Authorization grant fulfilled", grant__id=grant["oauth2_authorization_grant_id"],
             user__id=session["user_id"])  # fmt: skip
    params = {"code": grant["code"]} if grant["code"] else {}
    raise _callback(grant["redirect_uri"], grant["response_mode"], grant["state"], params)


# ---------------------------------------------------------------- the token endpoint


def _token_pair(conn, session_id: str, ttl: int) -> tuple[str, str]:
    """A new access token for the session (replacing its current one) and a new refresh token."""
    access, refresh = crypto.token("mat"), crypto.token("mar")
    conn.run(
        "UPDATE oauth2_sessions SET access_token = :t, access_token_created_at = now(),"
        " expires_at = now() + make_interval(secs => :ttl) WHERE oauth2_session_id = :s",
        t=access, ttl=ttl, s=session_id,
    )  # fmt: skip
    conn.run("INSERT INTO oauth2_refresh_tokens (oauth2_refresh_token_id, oauth2_session_id, refresh_token)"
             " VALUES (:i, :s, :t)", i=crypto.ulid(), s=session_id, t=refresh)  # fmt: skip
    return access, refresh


def _provision_devices(handler, conn, user: dict, scope: str, client: dict) -> None:
    """The user (if its provisioning job is still pending) and the scope's devices, on the homeserver now, as
    token.rs does before answering (under the user's sync lock)."""
    worker = handler.app.worker
    lock = worker.user_lock if worker else threading.Lock()
    name = client["client_name"] or client["client_id"]
    with lock:
        try:
            if user["provision_pending"] and worker is not None:
                worker.provision(conn, user)
            for device in devices_of(scope):
                handler.app.homeserver.upsert_device(user["username"], device, name)
        except HomeserverError as error:
            log.error(TARGET, f"Failed to provision device: {error}", user__id=user["user_id"])
            raise _error(500, "server_error") from None


def token(handler, conn, client: dict, form: dict) -> None:
    """The authorization_code and refresh_token grants of POST /oauth2/token, once the client is authenticated."""
    if form["grant_type"] == "authorization_code":
        return _authorization_code(handler, conn, client, form)
    return _refresh(handler, conn, client, form)


def _answer(handler, access: str, refresh: str, scope: str) -> None:
    ttl = handler.app.access_token_ttl
    body = {"access_token": access, "refresh_token": refresh, "token_type": "Bearer", "expires_in": ttl}
    if scope:
        body["scope"] = scope
    handler.send(200, body, {"Pragma": "no-cache"})


def _authorization_code(handler, conn, client: dict, form: dict) -> None:
    if "authorization_code" not in client_metadata(client).get("grant_types", []):
        raise _error(401, "unauthorized_client")
    grant = store.one(conn, "SELECT *, now() - fulfilled_at > make_interval(secs => :ttl) AS late,"
                            " now() - exchanged_at > make_interval(secs => :grace) AS reused_late"
                            " FROM oauth2_authorization_grants WHERE code = :c",
                      c=form["code"], ttl=CODE_TTL, grace=CODE_REUSE_GRACE)  # fmt: skip
    if grant is None:
        raise _error(400, "invalid_grant")
    if grant["cancelled_at"] is not None:
        raise _error(400, "invalid_grant")
    if grant["exchanged_at"] is not None:
        log.warn(TARGET, "Authorization code was already exchanged", grant__id=grant["oauth2_authorization_grant_id"])
        if grant["reused_late"]:
            log.warn(TARGET, "Ending potentially compromised session", oauth2_session__id=grant["oauth2_session_id"])
            conn.run("UPDATE oauth2_sessions SET finished_at = now() WHERE oauth2_session_id = :s"
                     " AND finished_at IS NULL", s=grant["oauth2_session_id"])  # fmt: skip
        raise _error(400, "invalid_grant")
    if grant["fulfilled_at"] is None or grant["late"]:
        raise _error(400, "invalid_grant")
    if grant["client_id"] != client["client_id"]:
        raise _error(401, "unauthorized_client")
    verifier = form.get("code_verifier")
    if (grant["code_challenge"] is None) != (verifier is None):
        raise _error(400, "invalid_request")
    if verifier is not None:
        try:
            pkce_verify(grant["code_challenge_method"], grant["code_challenge"], verifier)
        except PkceError as error:
            log.info(TARGET, f"PKCE verification failed: {error}", grant__id=grant["oauth2_authorization_grant_id"])
            raise _error(400, "invalid_grant", f"PKCE verification failed: {error}") from None
    user = store.one(
        conn,
        "SELECT u.* FROM browser_sessions b JOIN users u USING (user_id) WHERE b.browser_session_id = :b"
        " AND b.finished_at IS NULL",
        b=grant["browser_session_id"],
    )
    if user is None:
        raise _error(400, "invalid_grant")
    scope = grant["scope"]
    session_id = crypto.ulid()
    with transaction(conn):
        conn.run(
            "INSERT INTO oauth2_sessions (oauth2_session_id, client_id, scope, access_token, expires_at, user_id,"
            " browser_session_id) VALUES (:s, :c, :scope, :placeholder, now(), :u, :b)",
            s=session_id, c=client["client_id"], scope=scope, placeholder=crypto.token("mat"),
            u=user["user_id"], b=grant["browser_session_id"],
        )  # fmt: skip
        access, refresh = _token_pair(conn, session_id, handler.app.access_token_ttl)
        _provision_devices(handler, conn, user, scope, client)
        exchanged = conn.run(
            "UPDATE oauth2_authorization_grants SET exchanged_at = now(), oauth2_session_id = :s"
            " WHERE oauth2_authorization_grant_id = :g AND exchanged_at IS NULL RETURNING 1",
            s=session_id, g=grant["oauth2_authorization_grant_id"],
        )  # fmt: skip
        if not exchanged:
            raise _error(400, "invalid_grant")
    log.info(TARGET, "Authorization code exchanged", client__id=client["client_id"], oauth2_session__id=session_id,
             user__id=user["user_id"])  # fmt: skip
    _answer(handler, access, refresh, scope)


def _refresh(handler, conn, client: dict, form: dict) -> None:
    if "refresh_token" not in client_metadata(client).get("grant_types", []):
        raise _error(401, "unauthorized_client")
    found = store.one(
        conn,
        "SELECT r.*, s.client_id, s.scope, s.finished_at AS session_finished_at FROM oauth2_refresh_tokens r"
        " JOIN oauth2_sessions s USING (oauth2_session_id) WHERE r.refresh_token = :t",
        t=form["refresh_token"],
    )
    if found is None or found["session_finished_at"] is not None or found["client_id"] != client["client_id"]:
        raise _error(400, "invalid_grant")
    with transaction(conn):
        consumed = conn.run(
            "UPDATE oauth2_refresh_tokens SET consumed_at = now() WHERE oauth2_refresh_token_id = :i"
            " AND consumed_at IS NULL RETURNING 1",
            i=found["oauth2_refresh_token_id"],
        )
        if not consumed:
            raise _error(400, "invalid_grant")
        access, refresh = _token_pair(conn, found["oauth2_session_id"], handler.app.access_token_ttl)
        conn.run("UPDATE oauth2_refresh_tokens SET next_refresh_token_id = (SELECT oauth2_refresh_token_id FROM"
                 " oauth2_refresh_tokens WHERE refresh_token = :t) WHERE oauth2_refresh_token_id = :i",
                 t=refresh, i=found["oauth2_refresh_token_id"])  # fmt: skip
    log.info(TARGET, "Tokens refreshed", client__id=client["client_id"], oauth2_session__id=found["oauth2_session_id"])
    _answer(handler, access, refresh, found["scope"])


# ---------------------------------------------------------------- introspection


def normalized_scope(scope: str) -> str:
    """introspection.rs normalize_scope: the API scope and device scopes in both their stable and unstable forms."""
    tokens = set(scope.split(" ")) - {""}
    for t in list(tokens):
        if t in (STABLE_API, UNSTABLE_API):
            tokens |= {STABLE_API, UNSTABLE_API}
        elif t.startswith((STABLE_DEVICE, UNSTABLE_DEVICE)):
            device = t.split(":device:", 1)[1]
            tokens |= {STABLE_DEVICE + device, UNSTABLE_DEVICE + device}
    return " ".join(sorted(tokens))


def introspect(conn, token: str, kind: str) -> dict:
    """An OAuth 2.0 access (`mat_`) or refresh (`mar_`) token, as introspection.rs answers for it."""
    if kind == "access_token":
        session = store.one(
            conn,
            "SELECT s.*, EXTRACT(EPOCH FROM s.expires_at)::BIGINT AS exp,"
            " EXTRACT(EPOCH FROM COALESCE(s.access_token_created_at, s.created_at))::BIGINT AS iat,"
            " EXTRACT(EPOCH FROM s.expires_at - now())::BIGINT AS expires_in"
            " FROM oauth2_sessions s WHERE s.access_token = :t AND s.expires_at > now() AND s.finished_at IS NULL",
            t=token,
        )
    else:
        session = store.one(
            conn,
            "SELECT s.*, EXTRACT(EPOCH FROM r.created_at)::BIGINT AS iat FROM oauth2_refresh_tokens r"
            " JOIN oauth2_sessions s USING (oauth2_session_id) WHERE r.refresh_token = :t AND r.consumed_at IS NULL"
            " AND s.finished_at IS NULL",
            t=token,
        )
    if session is None:
        return {"active": False}
    answer = {"active": True, "scope": normalized_scope(session["scope"]), "client_id": session["client_id"],
              "token_type": kind, "iat": int(session["iat"]), "nbf": int(session["iat"])}  # fmt: skip
    if session["user_id"] is not None:
        user = store.find_user_by_id(conn, session["user_id"])
        if user is None or user["locked_at"] is not None or user["deactivated_at"] is not None:
            return {"active": False}
        answer.update(username=user["username"], sub=user["user_id"])
    if kind == "access_token":
        answer.update(exp=int(session["exp"]), expires_in=int(session["expires_in"]))
    return answer
