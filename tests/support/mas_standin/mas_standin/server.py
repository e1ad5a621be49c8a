"""`mas-cli server`: the HTTP listeners of `http.listeners`, each mounting only the resources it lists.

What each resource answers (paths as in MAS 1.22.0's router, below the listener's `prefix`):
- health:    GET /health -> 200 `ok` after `SELECT 1` on the database, else 500.
- discovery: GET /.well-known/openid-configuration (issuer = http.issuer or http.public_base,
             endpoints under public_base, account_management_uri = <public_base>account/).
- oauth:     POST /oauth2/introspect, POST /oauth2/token (client_credentials; authorization_code and
             refresh_token in oauth.py), POST /oauth2/registration (oauth.py), GET /oauth2/keys.json;
             revoke/device/userinfo refuse.
- compat:    /_matrix/client/{version}/login (GET flows, POST m.login.password), /logout, /logout/all,
             /refresh, /login/sso/redirect[/{idp}]. A login body under a Content-Type that is not JSON is
             400 M_NOT_JSON; logins are rate-limited per client IP and per account (rate_limit.py), 429
             M_LIMIT_EXCEEDED "Too many login attempts"; another server name's user ID is 403 M_FORBIDDEN.
- human:     GET /authorize, GET/POST /login and /consent/{grant} (the authorization code flow, oauth.py);
             GET /, /account/..., /complete-compat-sso/{id}: small HTML pages.
- assets:    GET /assets/<file> from the resource's `path` (default ./share/assets/).
- adminapi:  /api/admin/v1/users: GET by-username/{username}, POST (create), GET {id},
             POST {id}/set-password, POST {id}/set-admin; GET oauth2-clients, upstream-oauth-providers and
             upstream-oauth-links (first page); the rest of the admin API answers 501.
- prometheus: GET /metrics, as crates/cli/src/telemetry.rs: with `telemetry.metrics.exporter: prometheus`
             200 (text/plain;version=1.0.0) with the `http.server.duration` histogram server.rs records for
             every request, per listener name, method, route and status (as http_server_duration_count and
             _sum; the stand-in's route templates are its own patterns, MAS's are axum's); without that
             exporter 500 "Prometheus exporter was not enabled in config" (and a warning at start).
- graphql, connection-info: minimal answers.
Anything else is a 404 with a JSON body.

The admin API is how a client listed in `policy.data.admin_clients` manages users, as in MAS:
  POST /oauth2/token  grant_type=client_credentials&scope=urn:mas:admin, client_secret_basic or _post
    -> 200 {"access_token": "mat_...", "token_type": "Bearer", "expires_in": 300, "scope": "urn:mas:admin"}
       (a client not in admin_clients: 403 {"error": "invalid_scope", "error_description":
       "scope 'urn:mas:admin' not allowed"}; bad credentials: 401 invalid_client; an unknown grant
       type: 400 unsupported_grant_type)
  then `Authorization: Bearer mat_...` on the admin API, whose answers are JSON:API documents:
    {"data": {"type": "user", "id": <ULID>, "attributes": {"username", "created_at", "locked_at",
     "deactivated_at", "admin", "legacy_guest"}, "links": {"self": "/api/admin/v1/users/<ULID>"}},
     "links": {"self": <the request's path>}}
  and errors {"errors": [{"title": ...}, ...]}: no header 400 "Missing authorization header",
  unknown/expired/revoked token or no urn:mas:admin scope 401 (see _admin_token/_admin_session).
The access tokens live in the stand-in's `oauth2_sessions` table.

Introspection (RFC 7662) is what Synapse depends on; the caller authenticates with the matrix shared
secret as a Bearer token (native `matrix_authentication_service` mode, Synapse >= 1.136) or as a
configured client (`client_secret_basic` / `client_secret_post`, e.g. msc3861's client
0000000000000000000SYNAPSE). An active compat access token gives, as MAS does:
  {"active": true, "scope": "urn:matrix:client:api:* urn:matrix:org.matrix.msc2967.client:api:*"
   (+ "urn:matrix:client:device:D urn:matrix:org.matrix.msc2967.client:device:D" unless the caller
   sent `X-MAS-Supports-Device-Id: 1`; + "urn:synapse:admin:*" for admin compat sessions),
   "client_id": "legacy", "username": <localpart>, "sub": <user ULID>, "device_id": D,
   "token_type": "access_token", "iat": t, "nbf": t}
with no `expires_in` (compat tokens do not expire). Anything else: {"active": false}.

Requests are logged as method, path (without query string), status and duration: never a header,
body, token, secret or password.
"""

import base64
import datetime
import hmac
import json
import mimetypes
import re
import signal
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import config as cfg
from . import crypto, log, oauth, passwords, policy, rate_limit, store, version
from .database import Pool, Unavailable, describe, migrate, pending, transaction
from .homeserver import HomeserverError, from_config

API_SCOPES = ("urn:matrix:client:api:*", "urn:matrix:org.matrix.msc2967.client:api:*")
DEVICE_SCOPE_PREFIXES = ("urn:matrix:client:device:", "urn:matrix:org.matrix.msc2967.client:device:")
ADMIN_SCOPE = "urn:synapse:admin:*"
ADMIN_API_SCOPE = "urn:mas:admin"
TARGET = "mas_handlers"
TEXT = {"Content-Type": "text/plain; charset=utf-8"}
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Fatal(Exception):
    """Stops the command with `Error: <message>` and exit status 1, like MAS's anyhow errors."""


class Reply(Exception):
    """Raised inside a handler to answer right away."""

    def __init__(self, status: int, body=None, headers: dict | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def matrix_error(status: int, errcode: str, error: str) -> Reply:
    return Reply(status, {"errcode": errcode, "error": error})


def oauth_error(status: int, error: str, description: str | None = None) -> Reply:
    body = {"error": error}
    if description:
        body["error_description"] = description
    return Reply(status, body)


def admin_error(status: int, *titles: str) -> Reply:
    """The admin API's ErrorResponse: one `title` per error of the chain, outermost first."""
    return Reply(status, {"errors": [{"title": title} for title in titles]})


def form_error(message: str) -> Reply:
    """A form body serde cannot read: axum's FailedToDeserializeFormBody, which MAS's ClientAuthorization
    does not expect and answers as an internal error."""
    return oauth_error(500, "server_error", f"Failed to deserialize form body: {message}")


def rust_debug(text: str) -> str:
    """A string as Rust's `{:?}` shows it, as MAS's error titles quote usernames."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
    return '"' + "".join(escapes.get(c) or (f"\\u{{{ord(c):x}}}" if not c.isprintable() else c) for c in text) + '"'


def timestamp(value) -> str | None:
    """A date as chrono serialises a DateTime<Utc>: RFC 3339 with `Z`, fractions of 0, 3 or 6 digits."""
    if value is None:
        return None
    value = value.astimezone(datetime.UTC)
    micros = value.microsecond
    fraction = "" if not micros else f".{micros // 1000:03d}" if micros % 1000 == 0 else f".{micros:06d}"
    return value.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


# What `config sync` gives every static client (crates/storage-pg/src/oauth2/client.rs, upsert_static), in the
# order the admin API lists a client's grant types.
STATIC_GRANT_TYPES = ["authorization_code", "refresh_token", "client_credentials",
                      "urn:ietf:params:oauth:grant-type:device_code"]  # fmt: skip


def user_document(user: dict, self_link: str | None = None) -> dict:
    """The admin API's SingleResponse<User> (crates/handlers/src/admin/{model,response}.rs)."""
    path = f"/api/admin/v1/users/{user['user_id']}"
    attributes = {
        "username": user["username"],
        "created_at": timestamp(user["created_at"]),
        "locked_at": timestamp(user["locked_at"]),
        "deactivated_at": timestamp(user["deactivated_at"]),
        "admin": user["can_request_admin"],
        "legacy_guest": False,
    }
    resource = {"type": "user", "id": user["user_id"], "attributes": attributes, "links": {"self": path}}
    return {"data": resource, "links": {"self": self_link or path}}


def username_valid(username: str) -> bool:
    """The admin API's check on a new username (crates/handlers/src/admin/v1/users/add.rs)."""
    return (
        0 < len(username.encode()) <= 255
        and not username.startswith("_")
        and re.fullmatch(r"[a-z0-9=_\-./+]+", username) is not None
    )


def parse_scope(value: str) -> str:
    """MAS's Scope from a `scope` parameter: space-separated tokens of RFC 6749's NQCHAR, kept sorted."""
    tokens = value.split(" ")
    if not all(re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", token) for token in tokens):
        raise form_error("Invalid scope format")
    return " ".join(sorted(set(tokens)))


def access_token_request(form: dict) -> dict:
    """MAS's AccessTokenRequest (crates/oauth2-types/src/requests.rs), tagged by `grant_type`.

    Unknown grant types read as `Unsupported` (answered after the client is authenticated);
    missing fields and bad scopes are serde errors.
    """
    grant = form.get("grant_type")
    if grant is None:
        raise form_error("missing field `grant_type`")
    required = {"authorization_code": "code", "refresh_token": "refresh_token",
                "urn:ietf:params:oauth:grant-type:device_code": "device_code"}.get(grant)  # fmt: skip
    if required and required not in form:
        raise form_error(f"missing field `{required}`")
    scope = None
    if grant in ("client_credentials", "refresh_token") and "scope" in form:
        scope = parse_scope(form["scope"])
    return {"grant_type": grant, "scope": scope}


# ------------------------------------------------------------ MAS's MatrixJsonBody (crates/handlers/src/compat/mod.rs)

NOT_JSON_CONTENT_TYPE = ("M_NOT_JSON", "Invalid Content-Type header: expected application/json")
# RFC 7230 token characters, as the mime crate's TOKEN_MAP has them.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _mime_params_parse(s: str, semicolon: int) -> bool:
    """Whether the parameters after `semicolon` parse as the mime 0.3 crate's parser (params_from_str) takes them."""
    start = pos = semicolon + 1
    n = len(s)
    while start < n:
        skipped = False
        while True:  # a name, up to "="; a space right where a parameter starts is skipped
            if pos == n:
                return False
            c = s[pos]
            if c == " " and pos == start:
                start = pos = pos + 1
                skipped = True
                break
            if c in _TOKEN:
                pos += 1
            elif c == "=" and pos > start:
                start = pos = pos + 1
                break
            else:
                return False
        if skipped:
            continue
        quoted = False
        while True:  # a value: token characters, or a quoted string
            if quoted:
                if pos == n:
                    return False
                c = s[pos]
                pos += 1
                if c == '"' and pos - 1 > start:
                    break
                if not (31 < ord(c) != 127):
                    return False
            else:
                if pos == n:
                    start = n
                    break
                c = s[pos]
                if c == '"' and pos == start:
                    quoted, start, pos = True, pos + 1, pos + 1
                elif c in _TOKEN:
                    pos += 1
                elif c == ";" and pos > start:
                    start = pos = pos + 1
                    break
                else:
                    return False
        if quoted:
            while True:  # after a quoted value: spaces, then ";" or the end
                if pos == n:
                    start = n
                    break
                c = s[pos]
                pos += 1
                if c == ";":
                    start = pos
                    break
                if c != " ":
                    return False
    return True


def content_type_is_json(value: str) -> bool:
    """MatrixJsonBody's check of a Content-Type header: it is text (HeaderValue::to_str), parses as a MIME type
    (the mime 0.3 crate: lowercased, the subtype ends at its last "+", the suffix after it), and is
    application/json or application/*+json."""
    if any(not (c == "\t" or " " <= c <= "~") for c in value) or value == "*/*":
        return False
    slash = 0
    while True:  # the top-level type, up to "/"
        if slash == len(value):
            return False
        if value[slash] == "/" and slash > 0:
            break
        if value[slash] not in _TOKEN:
            return False
        slash += 1
    start, plus, end = slash + 1, None, len(value)
    for i in range(start, len(value)):
        c = value[i]
        if c == "+" and i > start:
            plus = i
        elif c == ";" and i > start:
            end = i
            if not _mime_params_parse(value, i):
                return False
            break
        elif c not in _TOKEN:
            return False
    top, subtype = value[:slash].lower(), value[start : plus or end].lower()
    suffix = value[plus + 1 : end].lower() if plus else None
    return top == "application" and (subtype == "json" or suffix == "json")


class NotJsonDocument(ValueError):
    pass


def _reject_constant(name: str):
    raise NotJsonDocument(name)  # serde_json has no NaN or Infinity


def parse_json_document(raw: bytes):
    """serde_json::from_slice's syntax: UTF-8, one JSON value and nothing but whitespace after it."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        raise NotJsonDocument() from None


class BadFields(Exception):
    """A serde data error: the document parsed but does not fit the type (M_BAD_JSON)."""


def _optional_string(body: dict, key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadFields(key)
    return value


def _tag(body: dict):
    """An internally tagged enum's `type` (serde(tag = "type")): required, a string."""
    if "type" not in body or not isinstance(body["type"], str):
        raise BadFields("type")
    return body["type"]


def compat_login_request(document) -> dict:
    """compat/login.rs RequestBody: the credentials flattened in (Credentials, tagged by `type`, unknown types
    `Unsupported`), `refresh_token` (bool, default false), `device_id`, `initial_device_display_name`."""
    if not isinstance(document, dict):
        raise BadFields("body")
    kind = _tag(document)
    refresh_token = document.get("refresh_token", False)
    if not isinstance(refresh_token, bool):
        raise BadFields("refresh_token")
    request = {"refresh_token": refresh_token, "device_id": _optional_string(document, "device_id"),
               "initial_device_display_name": _optional_string(document, "initial_device_display_name")}  # fmt: skip
    if kind == "m.login.password":
        identifier = document.get("identifier")
        if identifier is not None:
            if not isinstance(identifier, dict):
                raise BadFields("identifier")
            if _tag(identifier) == "m.id.user":
                if not isinstance(identifier.get("user"), str):
                    raise BadFields("identifier.user")
                identifier = {"type": "m.id.user", "user": identifier["user"]}
            else:
                identifier = {"type": "unsupported"}
        if not isinstance(document.get("password"), str):
            raise BadFields("password")
        return {**request, "type": kind, "identifier": identifier, "user": _optional_string(document, "user"),
                "password": document["password"]}  # fmt: skip
    if kind == "m.login.token":
        if not isinstance(document.get("token"), str):
            raise BadFields("token")
        return {**request, "type": kind, "token": document["token"]}
    return {**request, "type": "unsupported"}


def _page(title: str, text: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>"
            f"<body><h1>{title}</h1><p>{text}</p>"
            "<p><small>matrix-authentication-service test double (tests/support/mas_standin)</small></p></body></html>\n")  # fmt: skip


class App:
    """State shared by every listener of one server process."""

    def __init__(self, config: dict, pool: Pool, homeserver, encryption_key: bytes, worker: store.Worker | None):
        http = cfg.http(config)
        self.config, self.pool, self.homeserver, self.key, self.worker = (
            config,
            pool,
            homeserver,
            encryption_key,
            worker,
        )
        self.public = http["public_base"].rstrip("/") + "/"
        self.issuer = http.get("issuer") or http["public_base"]
        self.passwords_enabled = cfg.passwords_enabled(config)
        # util.rs password_manager_from_config: the schemes (serve() has read their secret files already)
        try:
            self.passwords = passwords.Manager(config.get("passwords")) if self.passwords_enabled else None
        except passwords.SchemeError as error:
            raise Fatal(f"failed to load the password schemes: {error}") from None
        # crates/cli/src/util.rs site_config_from_config
        account = config.get("account") or {}
        self.password_registration_enabled = self.passwords_enabled and account.get(
            "password_registration_enabled", False
        )
        self.device_code_grant_enabled = (config.get("oauth") or {}).get("device_code_grant_enabled", True)
        self.minimum_complexity = cfg.minimum_complexity(config)
        self.admin_clients = policy.admin_clients(config)
        # experimental.access_token_ttl, 5 minutes by default (crates/config/src/sections/experimental.rs)
        self.access_token_ttl = (config.get("experimental") or {}).get("access_token_ttl", 300)
        self.compat_token_ttl = (config.get("experimental") or {}).get("compat_token_ttl", 300)
        # telemetry.rs init_meter: the Prometheus exporter only with metrics.exporter = prometheus (default none).
        exporter = ((config.get("telemetry") or {}).get("metrics") or {}).get("exporter", "none")
        self.durations = {} if exporter == "prometheus" else None  # labels -> [count, sum of milliseconds]
        self.durations_lock = threading.Lock()
        # crates/cli/src/commands/server.rs: http.trusted_proxies, and Limiter::new(&config.rate_limiting).
        self.trusted_proxies = rate_limit.trusted_proxies(http)
        try:
            self.limiter = rate_limit.Limiter(config)
        except ValueError as error:
            raise Fatal(str(error)) from None

    def record(self, labels: tuple, milliseconds: int) -> None:
        """server.rs's DurationRecorderLayer("http.server.duration"): one request, with its labels."""
        if self.durations is not None:
            with self.durations_lock:
                entry = self.durations.setdefault(labels, [0, 0])
                entry[0] += 1
                entry[1] += milliseconds

    def prometheus_text(self) -> str:
        lines = ["# TYPE http_server_duration histogram"]
        with self.durations_lock:
            for labels, (count, total) in sorted(self.durations.items()):
                shown = ",".join(f'{key}="{value}"' for key, value in labels if value is not None)
                lines.append(f'http_server_duration_bucket{{{shown},le="+Inf"}} {count}')
                lines.append(f"http_server_duration_sum{{{shown}}} {total}")
                lines.append(f"http_server_duration_count{{{shown}}} {count}")
        return "\n".join(lines) + "\n"

    def discovery(self) -> dict:
        """crates/handlers/src/oauth2/discovery.rs: every URL under public_base, whatever address was asked."""
        p = self.public
        auth_methods = ["client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt", "none"]
        grant_types = ["authorization_code", "refresh_token", "client_credentials"]
        if self.device_code_grant_enabled:
            grant_types.append("urn:ietf:params:oauth:grant-type:device_code")
        document = {
            "issuer": self.issuer,
            "authorization_endpoint": f"{p}authorize",
            "token_endpoint": f"{p}oauth2/token",
            "jwks_uri": f"{p}oauth2/keys.json",
            "registration_endpoint": f"{p}oauth2/registration",
            "scopes_supported": ["openid", "email"],
            "response_types_supported": ["code", "id_token", "code id_token"],
            "response_modes_supported": ["form_post", "query", "fragment"],
            "grant_types_supported": grant_types,
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint": f"{p}oauth2/revoke",
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "introspection_endpoint": f"{p}oauth2/introspect",
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "code_challenge_methods_supported": ["plain", "S256"],
            "userinfo_endpoint": f"{p}oauth2/userinfo",
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "display_values_supported": ["page"],
            "claim_types_supported": ["normal"],
            "claims_supported": ["iss", "sub", "aud", "iat", "exp", "nonce", "auth_time", "at_hash", "c_hash"],
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
            # `create` only when password registration is enabled.
            "prompt_values_supported": ["login", "create"] if self.password_registration_enabled else ["login"],
            "graphql_endpoint": f"{p}graphql",
            "account_management_uri": f"{p}account/",
            "account_management_actions_supported": ["org.matrix.profile", "org.matrix.devices_list",
                                                     "org.matrix.device_view", "org.matrix.device_delete",
                                                     "org.matrix.cross_signing_reset", "org.matrix.sessions_list",
                                                     "org.matrix.session_view", "org.matrix.session_end"],
        }  # fmt: skip
        if self.device_code_grant_enabled:
            document["device_authorization_endpoint"] = f"{p}oauth2/device"
        return document


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mas-standin"
    sys_version = ""
    app: App
    resources: dict
    prefix: str
    listener_name: str | None = None
    _body: bytes | None = None  # the request body, once read (body())
    ROUTES = [
        ("health", "GET", r"/health", "health"),
        ("prometheus", "GET", r"/metrics", "metrics"),
        ("discovery", "GET", r"/\.well-known/openid-configuration", "discovery"),
        ("discovery", "GET", r"/\.well-known/change-password", "change_password"),
        ("oauth", "GET", r"/oauth2/keys\.json", "jwks"),
        ("oauth", "POST", r"/oauth2/introspect", "introspect"),
        ("oauth", "POST", r"/oauth2/token", "token"),
        ("oauth", "POST", r"/oauth2/registration", "oauth2_registration"),
        ("oauth", "POST", r"/oauth2/(revoke|device)", "oauth_refused"),
        ("oauth", "GET", r"/oauth2/userinfo", "userinfo"),
        ("compat", "GET", r"/_matrix/client/[^/]+/login", "login_flows"),
        ("compat", "POST", r"/_matrix/client/[^/]+/login", "login"),
        ("compat", "POST", r"/_matrix/client/[^/]+/logout", "logout"),
        ("compat", "POST", r"/_matrix/client/[^/]+/logout/all", "logout_all"),
        ("compat", "POST", r"/_matrix/client/[^/]+/refresh", "refresh"),
        ("compat", "GET", r"/_matrix/client/[^/]+/login/sso/redirect(/[^/]*)?", "sso_redirect"),
        ("human", "GET", r"/login", "login_page"),
        ("human", "POST", r"/login", "login_post"),
        ("human", "GET", r"/authorize", "authorize"),
        ("human", "GET", r"/consent/([^/]+)", "consent"),
        ("human", "POST", r"/consent/([^/]+)", "consent_post"),
        ("human", "GET", r"/register/password", "register_password"),
        ("human", "POST", r"/register/password", "register_password_post"),
        ("human", "GET", r"/|/logout|/register|/authorize|/account/.*|/complete-compat-sso/[^/]+", "human"),
        ("graphql", "POST", r"/graphql", "graphql"),
        ("assets", "GET", r"/assets/(.+)", "asset"),
        ("adminapi", "GET", r"/api/admin/v1/users/by-username/([^/]+)", "admin_user_by_username"),
        ("adminapi", "POST", r"/api/admin/v1/users", "admin_add_user"),
        ("adminapi", "GET", r"/api/admin/v1/users/([^/]+)", "admin_user"),
        ("adminapi", "POST", r"/api/admin/v1/users/([^/]+)/set-password", "admin_set_password"),
        ("adminapi", "POST", r"/api/admin/v1/users/([^/]+)/set-admin", "admin_set_admin"),
        ("adminapi", "GET", r"/api/admin/v1/oauth2-clients", "admin_oauth2_clients"),
        ("adminapi", "GET", r"/api/admin/v1/upstream-oauth-providers", "admin_upstream_oauth_providers"),
        ("adminapi", "GET", r"/api/admin/v1/upstream-oauth-links", "admin_upstream_oauth_links"),
        ("adminapi", "GET", r"/api/admin/v1/.+", "admin_other"),
        ("adminapi", "POST", r"/api/admin/v1/.+", "admin_other"),
        ("connection-info", "GET", r"/connection-info", "connection_info"),
    ]

    # ------------------------------------------------------------ plumbing

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # requests are logged in dispatch(), without query strings

    def log_error(self, format, *args):  # noqa: A002
        log.warn("mas_http", "Malformed request", peer=self.client_address[0])

    def send(self, status: int, body=None, headers: dict | None = None) -> None:
        if isinstance(body, bytes):
            data, kind = body, "application/octet-stream"
        elif isinstance(body, str):
            data, kind = body.encode(), "text/html; charset=utf-8" if body.lstrip().startswith("<") else "text/plain"
        elif body is None:
            data, kind = b"", None
        else:
            data, kind = json.dumps(body).encode(), "application/json"
        self.body()
        self.status = status
        self.send_response(status)
        headers = dict(headers or {})
        if kind and "Content-Type" not in headers:
            headers["Content-Type"] = kind
        headers.setdefault("Cache-Control", "no-store")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def body(self) -> bytes:
        """The request's body, read once. send() reads it when the handler did not: on a kept-alive connection
        (nginx's upstream keepalive) an unread body would be taken for the next request, as hyper never does."""
        if self._body is None:
            length = int(self.headers.get("Content-Length") or 0)
            self._body = self.rfile.read(length) if length > 0 else b""
        return self._body

    def json_body(self, required: bool = True) -> dict:
        raw = self.body()
        if not raw.strip() and not required:
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            raise matrix_error(400, "M_NOT_JSON", "Body is not a valid JSON document") from None
        if not isinstance(value, dict):
            raise matrix_error(400, "M_BAD_JSON", "Body is not a JSON object")
        return value

    def matrix_json_body(self):
        """compat/mod.rs MatrixJsonBody: a Content-Type, when there is one (the Matrix spec makes it optional),
        must be JSON; then the body must be a JSON document."""
        content_type = self.headers.get("Content-Type")
        if content_type is not None and not content_type_is_json(content_type):
            raise matrix_error(400, *NOT_JSON_CONTENT_TYPE)
        try:
            return parse_json_document(self.body())
        except NotJsonDocument:
            raise matrix_error(400, "M_NOT_JSON", "Body is not a valid JSON document") from None

    def client_ip(self):
        """The requester's address (rate_limit.client_ip) as MAS's client IP middleware infers it."""
        return rate_limit.client_ip(self.client_address[0], self.headers.get("X-Forwarded-For"),
                                    self.app.trusted_proxies)  # fmt: skip

    def form(self) -> dict:
        return {k: v[0] for k, v in urllib.parse.parse_qs(self.body().decode("utf-8", "replace")).items()}

    def bearer(self) -> str | None:
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    def do_GET(self):
        self.dispatch()

    def do_HEAD(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    def do_OPTIONS(self):
        self.dispatch()

    def dispatch(self) -> None:
        started, self.status, self.route, self._body = time.monotonic(), 0, "FALLBACK", None
        path = urllib.parse.urlsplit(self.path).path
        logged_path = path
        try:
            if self.prefix and not (path == self.prefix or path.startswith(self.prefix + "/")):
                raise Reply(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
            path = path[len(self.prefix) :] or "/"
            method = "GET" if self.command == "HEAD" else self.command
            allowed = []
            for resource, route_method, pattern, name in self.ROUTES:
                match = re.fullmatch(pattern, path)
                if resource not in self.resources or not match:
                    continue
                if route_method != method:
                    allowed.append(route_method)
                    continue
                self.route = pattern.replace("[^/]+", "{param}").replace("\\", "")
                return getattr(self, f"route_{name}")(match, self.resources[resource])
            if allowed:
                raise Reply(405, {"errcode": "M_UNRECOGNIZED", "error": "Method not allowed"},
                            {"Allow": ", ".join(sorted(set(allowed)))})  # fmt: skip
            raise Reply(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
        except Reply as reply:
            self.send(reply.status, reply.body, reply.headers)
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True
        except Exception as error:  # answer 500 and keep serving, like MAS's InternalError
            log.error(TARGET, f"Internal error: {type(error).__name__}: {describe(error)}", path=logged_path)
            try:
                self.send(500, {"errcode": "M_UNKNOWN", "error": "Internal server error"})
            except OSError:
                self.close_connection = True
        finally:
            took = (time.monotonic() - started) * 1000
            log.info("mas_http", f"{self.command} {logged_path} {self.status}", duration=f"{took:.1f}ms")
            labels = (("http_request_method", self.command), ("http_response_status_code", self.status),
                      ("http_route", self.route), ("mas_listener_name", self.listener_name),
                      ("network_protocol_name", "http"), ("url_scheme", "http"))  # fmt: skip
            self.app.record(labels, int(took))

    # ------------------------------------------------------------ health, discovery, keys

    def route_health(self, match, resource):
        try:
            with self.app.pool.connection() as conn:
                conn.run("SELECT :v", v=1)
        except Exception as error:
            log.error(TARGET, f"Health check failed: {describe(error)}")
            raise Reply(500, "database unavailable") from None
        self.send(200, "ok", {"Content-Type": "text/plain; charset=utf-8"})

    def route_metrics(self, match, resource):
        if self.app.durations is None:
            self.send(500, "Prometheus exporter was not enabled in config", {"Content-Type": "text/plain"})
        else:
            self.send(200, self.app.prometheus_text(), {"Content-Type": "text/plain;version=1.0.0"})

    def route_discovery(self, match, resource):
        self.send(200, self.app.discovery(), {"Access-Control-Allow-Origin": "*"})

    def route_change_password(self, match, resource):
        self.send(303, None, {"Location": f"{self.app.public}account/password/change"})

    def route_jwks(self, match, resource):
        self.send(200, {"keys": []}, {"Access-Control-Allow-Origin": "*"})

    def route_userinfo(self, match, resource):
        raise oauth_error(401, "invalid_token", "the MAS stand-in issues no OAuth 2.0 access tokens")

    def route_oauth_refused(self, match, resource):
        raise oauth_error(400, "invalid_request", "not implemented by the MAS stand-in (a test double)")

    # ------------------------------------------------------------ token endpoint (client_credentials)

    def _form_body(self) -> dict | None:
        """axum's Form on a POST: the fields of an `application/x-www-form-urlencoded` body, else None."""
        raw = self.body()
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            return None
        return dict(urllib.parse.parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))

    def _client_authorization(self, form: dict | None, read_form) -> tuple[dict, object]:
        """MAS's ClientAuthorization extractor (crates/axum-utils/src/client_authorization.rs).

        In order: the Authorization header (Basic or Bearer, else 400 "Invalid Authorization
        header"), the form (`read_form`), then which credentials the request carries. Basic
        credentials are taken as they are, not URL-decoded, as MAS does. Returns the credentials
        ({"method", "client_id", "secret"}) and what `read_form` made of the form (None without one).
        """
        header, basic, bearer = self.headers.get("Authorization"), None, None
        if header is not None:
            if header[:6].lower() == "basic ":
                try:
                    decoded = base64.b64decode(header[6:].lstrip(" "), validate=True).decode()
                except ValueError:
                    decoded = ""
                if ":" not in decoded:
                    raise oauth_error(400, "invalid_request", "Invalid Authorization header")
                basic = decoded.partition(":")[::2]
            elif header[:7].lower() == "bearer " and header[7:].strip():
                bearer = header[7:].strip()
            else:
                raise oauth_error(400, "invalid_request", "Invalid Authorization header")
        parsed = read_form(form) if form is not None else None
        fields = form or {}
        client_id, secret = fields.get("client_id"), fields.get("client_secret")
        assertion_type, assertion = fields.get("client_assertion_type"), fields.get("client_assertion")
        no_assertion = assertion_type is None and assertion is None
        if basic is not None and secret is None and no_assertion:
            if client_id is not None and client_id != basic[0]:
                raise oauth_error(400, "invalid_grant", f"client_id in form ({rust_debug(client_id)}) does not match"
                                  f" credential ({rust_debug(basic[0])})")  # fmt: skip
            return {"method": "client_secret_basic", "client_id": basic[0], "secret": basic[1]}, parsed
        if header is None and client_id is not None and no_assertion:
            method = "client_secret_post" if secret is not None else "none"
            return {"method": method, "client_id": client_id, "secret": secret}, parsed
        if header is None and secret is None and assertion_type is not None and assertion is not None:
            if assertion_type == JWT_BEARER:
                raise oauth_error(400, "invalid_request", "client assertions are not implemented by the MAS stand-in")
            if client_id is None:
                raise oauth_error(400, "invalid_request", f"Unsupported client_assertion_type: {assertion_type}")
        if bearer is not None and client_id is None and secret is None and no_assertion:
            return {"method": "bearer", "client_id": None, "secret": None}, parsed
        if header is None and client_id is None and secret is None and no_assertion:
            raise oauth_error(400, "invalid_request", "No credentials were presented")
        raise oauth_error(400, "invalid_request")

    def _secret_matches(self, client: dict, secret: str | None) -> bool:
        expected = crypto.decrypt(self.app.key, client["encrypted_client_secret"])
        return secret is not None and hmac.compare_digest(secret.encode(), expected.encode())

    def _token_client(self, conn, credentials: dict) -> dict:
        """The token endpoint's client: fetched, then its credentials verified (crates/handlers/src/oauth2/token.rs).

        Unknown client or wrong credentials: 401 invalid_client; a client whose secret is missing or
        does not decrypt: 500 server_error (MAS's "internal" verification errors).
        """
        client = store.find_client(conn, credentials["client_id"]) if credentials["client_id"] is not None else None
        if client is None:
            raise oauth_error(401, "invalid_client")
        method = client["client_auth_method"]
        if method == "none" and credentials["method"] == "none":
            return client
        if method != credentials["method"] or method not in ("client_secret_basic", "client_secret_post"):
            raise oauth_error(401, "invalid_client")  # authentication method mismatch
        if client["encrypted_client_secret"] is None:
            raise oauth_error(500, "server_error")
        try:
            matches = self._secret_matches(client, credentials["secret"])
        except ValueError:
            raise oauth_error(500, "server_error") from None
        if not matches:
            raise oauth_error(401, "invalid_client")
        return client

    def route_token(self, match, resource):
        """POST /oauth2/token. Of MAS's grants, client_credentials is served here, authorization_code and
        refresh_token by oauth.token; the stand-in never issues device codes, so that grant finds nothing
        (400 invalid_grant), and any other grant type is 400 unsupported_grant_type.

        client_credentials: the scope goes through the policy (policy.py; denied: 403 invalid_scope
        with the violations as description); then a new session and its `mat_` access token,
        valid `experimental.access_token_ttl` seconds:
          {"access_token", "token_type": "Bearer", "expires_in", ["scope" unless empty]}
        """
        form = self._form_body()
        credentials, grant = self._client_authorization(form, access_token_request)
        with self.app.pool.connection() as conn:
            client = self._token_client(conn, credentials)
            if grant is None:
                raise oauth_error(400, "invalid_request")
            if grant["grant_type"] in ("authorization_code", "refresh_token"):
                return oauth.token(self, conn, client, form)  # the authorization code flow: oauth.py
            if grant["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code":
                raise oauth_error(400, "invalid_grant")
            if grant["grant_type"] != "client_credentials":
                raise oauth_error(400, "unsupported_grant_type")
            scope = grant["scope"] or ""
            client_id = crypto.parse_ulid(client["client_id"])
            violations = policy.client_credentials_violations(scope, client_id, self.app.admin_clients)
            if violations:
                log.info(TARGET, "Policy denied the client_credentials grant", client__id=client_id)
                raise oauth_error(403, "invalid_scope", ", ".join(violations))
            session = store.start_oauth2_session(conn, client["client_id"], scope, self.app.access_token_ttl)
        log.info(TARGET, "Access token issued (client_credentials)", client__id=client_id,
                 oauth2_session__id=session["oauth2_session_id"])  # fmt: skip
        reply = {
            "access_token": session["access_token"],
            "token_type": "Bearer",
            "expires_in": self.app.access_token_ttl,
        }
        if scope:
            reply["scope"] = scope
        self.send(200, reply, {"Pragma": "no-cache"})

    # ------------------------------------------------------------ introspection

    def _authenticate_client(self, conn, form: dict) -> None:
        token = self.bearer()
        if token is not None:
            if not self.app.homeserver.verify_token(token):
                raise oauth_error(401, "access_denied", "bearer token presented is invalid")
            return
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                client_id, _, secret = base64.b64decode(value.strip()).decode().partition(":")
            except ValueError:
                raise oauth_error(401, "invalid_client") from None
            method = "client_secret_basic"
            client_id, secret = urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)
        elif "client_id" in form:
            client_id, secret = form["client_id"], form.get("client_secret")
            method = "client_secret_post" if secret is not None else "none"
        else:
            raise oauth_error(401, "invalid_client")
        client = store.one(conn, "SELECT * FROM oauth2_clients WHERE client_id = :c", c=client_id)
        if client is None:
            raise oauth_error(401, "invalid_client")
        if client["client_auth_method"] == "none":
            raise oauth_error(401, "access_denied")  # only confidential clients may introspect
        if client["client_auth_method"] != method or client["encrypted_client_secret"] is None:
            raise oauth_error(401, "invalid_client", "client authentication method mismatch")
        if not self._secret_matches(client, secret):
            raise oauth_error(401, "invalid_client", "invalid client credentials")

    def route_introspect(self, match, resource):
        form = self.form()
        with self.app.pool.connection() as conn:
            self._authenticate_client(conn, form)
            token = form.get("token")
            if token is None:
                raise oauth_error(400, "invalid_request")
            hint = form.get("token_type_hint")
            kind = crypto.token_type(token)
            session = store.session_for_token(conn, token) if hint in (None, "access_token") else None
            if kind in ("access_token", "refresh_token"):  # OAuth 2.0 sessions: oauth.py
                return self.send(200, oauth.introspect(conn, token, kind))
        if kind != "compat_access_token" or session is None:
            return self.send(200, {"active": False})
        device = session["device_id"]  # None for a deviceless session imported by syn2mas
        scope = set(API_SCOPES)
        if self.headers.get("X-MAS-Supports-Device-Id") != "1" and device is not None:
            scope |= {prefix + device for prefix in DEVICE_SCOPE_PREFIXES}
        if session["is_synapse_admin"]:
            scope.add(ADMIN_SCOPE)
        issued = int(session["created_at"].timestamp())
        body = {
            "active": True, "scope": " ".join(sorted(scope)), "client_id": "legacy", "username": session["username"],
            "token_type": "access_token", "iat": issued, "nbf": issued, "sub": session["user_id"],
        }  # fmt: skip
        if session.get("expires_at") is not None:  # a Synapse token with `valid_until_ms`
            body["exp"] = int(session["expires_at"].timestamp())
            body["expires_in"] = int(session["expires_at"].timestamp() - time.time())
        if device is not None:
            body["device_id"] = device
        self.send(200, body)

    # ------------------------------------------------------------ compat (Matrix C-S API)

    def route_login_flows(self, match, resource):
        sso = {"type": "m.login.sso", "oauth_aware_preferred": True,
               "org.matrix.msc3824.delegated_oidc_compatibility": True}  # fmt: skip
        flows = ([{"type": "m.login.password"}] if self.app.passwords_enabled else []) + [
            sso,
            {"type": "m.login.token"},
        ]
        self.send(200, {"flows": flows})

    def route_login(self, match, resource):
        """compat/login.rs post(): the body (MatrixJsonBody<RequestBody>), the credentials, then for a password
        user_password_login(): the user (UserNotFound before anything else), locked, the rate limit
        (Limiter::check_password, before the password is looked at), the password."""
        try:
            body = compat_login_request(self.matrix_json_body())
        except BadFields:
            raise matrix_error(400, "M_BAD_JSON", "JSON fields are not valid") from None
        if body["type"] == "m.login.token":
            raise matrix_error(403, "M_FORBIDDEN", "Invalid login token")  # the stand-in issues no login tokens
        if body["type"] != "m.login.password" or not self.app.passwords_enabled:
            raise matrix_error(400, "M_UNKNOWN", "Invalid login type")
        identifier, user = body["identifier"], body["user"]
        if user is None:  # the deprecated top-level `user` wins over `identifier`, as in Synapse
            if identifier is None:
                raise matrix_error(400, "M_BAD_JSON", "Missing property 'identifier")
            if identifier["type"] != "m.id.user":
                raise matrix_error(400, "M_UNKNOWN", "Unsupported login identifier")
            user = identifier["user"]
        password = body["password"]
        device_id, display_name = body["device_id"], body["initial_device_display_name"]
        # The localpart of a user ID of this server name; anything else (another server name's user ID too) is
        # looked up whole, as a username, and found by no one.
        username = self.app.homeserver.localpart(user) or user
        with self.app.pool.connection() as conn:
            account = store.find_user(conn, username)
            if account is None or account["deactivated_at"] is not None:
                raise matrix_error(403, "M_FORBIDDEN", "Invalid username/password")
            if account["locked_at"] is not None:
                raise matrix_error(401, "M_USER_LOCKED", "User account has been locked")
            try:
                self.app.limiter.check_password(self.client_ip(), account["user_id"])
            except rate_limit.Limited as error:
                log.warn(TARGET, f"request rate limited: {error}")
                raise matrix_error(429, "M_LIMIT_EXCEEDED", "Too many login attempts") from None
            if account["hashed_password"] is None:
                raise matrix_error(403, "M_FORBIDDEN", "Invalid username/password")
            # verify_and_upgrade (passwords.rs): by the stored scheme version (syn2mas imports Synapse's bcrypt
            # hashes as version 1); a hash of an older version is replaced by one of the newest.
            try:
                verified, upgraded = self.app.passwords.verify_and_upgrade(
                    account.get("password_version"), password, account["hashed_password"]
                )
            except passwords.SchemeError as error:
                log.error(TARGET, f"Failed to verify the password: {error}", user__id=account["user_id"])
                raise matrix_error(500, "M_UNKNOWN", "Internal server error") from None
            if not verified:
                raise matrix_error(403, "M_FORBIDDEN", "Invalid username/password")
            if upgraded is not None:
                log.info(TARGET, "Upgrading the password hash to the newest scheme", user__id=account["user_id"],
                         scheme=upgraded[0])  # fmt: skip
                store.upgrade_password(conn, account["user_id"], *upgraded)
            device_id = device_id or crypto.device_id()
            worker = self.app.worker
            lock = worker.user_lock if worker else threading.Lock()
            with lock:
                session = store.start_compat_session(conn, account["user_id"], device_id, display_name)
                try:
                    # A provisioning job still pending runs now, as MAS's worker would have by then.
                    if account["provision_pending"] and worker is not None:
                        worker.provision(conn, account)
                    # Like MAS, create the device synchronously so the token works on return.
                    self.app.homeserver.upsert_device(username, device_id, display_name)
                except HomeserverError as error:
                    log.error(TARGET, f"Failed to provision device: {error}", user__id=account["user_id"])
                    store.finish_sessions(conn, account["user_id"], session["compat_session_id"])
                    raise matrix_error(500, "M_UNKNOWN", "Internal server error") from None
        log.info(TARGET, "Compat login", user__id=account["user_id"], compat_session__id=session["compat_session_id"])
        self.send(200, {"access_token": session["access_token"], "device_id": device_id,
                        "user_id": self.app.homeserver.mxid(username)})  # fmt: skip

    def _session_from_bearer(self, conn) -> dict:
        token = self.bearer()
        if token is None:
            raise matrix_error(401, "M_MISSING_TOKEN", "Missing access token")
        session = store.session_for_token(conn, token)
        if session is None:
            raise matrix_error(401, "M_UNKNOWN_TOKEN", "Invalid access token")
        return session

    def _sync_devices_now(self, conn, user_id: str) -> None:
        """The device sync job MAS schedules on logout, run right away (the worker retries if it fails)."""
        worker = self.app.worker
        if worker is None:
            return
        with worker.user_lock:
            user = store.one(conn, "SELECT * FROM users WHERE user_id = :i", i=user_id)
            try:
                worker.sync_devices(conn, user)
            except HomeserverError as error:
                log.warn(TARGET, f"Device sync failed, left to the worker: {error}", user__id=user_id)
                worker.wake.set()

    def route_logout(self, match, resource):
        with self.app.pool.connection() as conn:
            session = self._session_from_bearer(conn)
            store.finish_sessions(conn, session["user_id"], session["compat_session_id"])
            self._sync_devices_now(conn, session["user_id"])
        self.send(200, {})

    def route_logout_all(self, match, resource):
        body = self.json_body(required=False)
        with self.app.pool.connection() as conn:
            session = self._session_from_bearer(conn)
            if body.get("io.element.only_compat_is_fine") is not True:
                raise matrix_error(
                    404, "M_UNRECOGNIZED", "The /logout/all endpoint is not supported by this deployment"
                )
            ended = store.finish_sessions(conn, session["user_id"])
            log.info(TARGET, f"Logged out {ended} sessions for user {session['user_id']}")
            self._sync_devices_now(conn, session["user_id"])
        self.send(200, {})

    def route_refresh(self, match, resource):
        body = self.json_body()
        if not isinstance(body.get("refresh_token"), str):
            raise matrix_error(400, "M_BAD_JSON", "Missing property 'refresh_token'")
        # compat/refresh.rs: a compat refresh token (those syn2mas imported from Synapse: the stand-in's own compat
        # logins issue none), unconsumed, of a session not finished: a new pair (`experimental.compat_token_ttl`),
        # the old refresh token consumed and its access token expired.
        if crypto.token_type(body["refresh_token"]) != "compat_refresh_token":
            raise matrix_error(401, "M_UNKNOWN_TOKEN", "Invalid refresh token")
        with self.app.pool.connection() as conn:
            pair = store.refresh_compat_session(conn, body["refresh_token"], self.app.compat_token_ttl)
        if pair is None:
            raise matrix_error(401, "M_UNKNOWN_TOKEN", "Invalid refresh token")
        access, refresh = pair
        self.send(200, {"access_token": access, "refresh_token": refresh,
                        "expires_in_ms": self.app.compat_token_ttl * 1000})  # fmt: skip

    def route_sso_redirect(self, match, resource):
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        redirect = query.get("redirectUrl")
        if not redirect:
            raise Reply(400, "Missing redirectUrl", {"Content-Type": "text/plain"})
        target = urllib.parse.urlsplit(redirect)
        if (
            not target.scheme
            or target.username
            or target.password
            or (target.scheme in ("http", "https") and not target.hostname)
        ):
            raise Reply(400, "invalid redirectUrl", {"Content-Type": "text/plain"})
        self.send(303, None, {"Location": f"{self.app.public}complete-compat-sso/{crypto.ulid()}"})

    # ------------------------------------------------------------ admin API (/api/admin/v1)

    def _admin_token(self) -> str:
        """The checks of MAS's CallContext (crates/handlers/src/admin/call_context.rs) made on the header alone.

        No header: 400 "Missing authorization header"; not `Bearer <token>`: 400 "Invalid
        authorization header"; not a well-formed token: 401 "Invalid type of access token" followed
        by the format error; a token of another kind (compat, refresh): 401 "Invalid type of access
        token". (MAS takes a database connection first; the stand-in connects after these checks.)
        """
        header = self.headers.get("Authorization")
        if header is None:
            raise admin_error(400, "Missing authorization header")
        if header[:7].lower() != "bearer " or not header[7:].strip():
            raise admin_error(400, "Invalid authorization header")
        token = header[7:].strip()
        try:
            kind = crypto.check_token(token)
        except ValueError as error:
            raise admin_error(401, "Invalid type of access token", str(error)) from None
        if kind not in ("access_token", "personal_access_token"):
            raise admin_error(401, "Invalid type of access token")
        return token

    def _admin_session(self, conn, token: str) -> dict:
        """The rest of CallContext: the token's session must exist, be active, unexpired and hold urn:mas:admin.

        The stand-in issues no personal access tokens, so an `mpt_` token is always unknown.
        """
        session = store.oauth2_session_for_token(conn, token)
        if session is None:
            raise admin_error(401, "Unknown access token")
        if session["finished_at"] is not None:
            raise admin_error(401, "Access token revoked")
        if session["expired"]:
            raise admin_error(401, "Access token expired")
        if ADMIN_API_SCOPE not in session["scope"].split(" "):
            raise admin_error(401, "Missing urn:mas:admin scope")
        return session

    @staticmethod
    def _admin_user_id(raw: str) -> str:
        """MAS's UlidPathParam: 400 "Invalid ULID in path" then the ulid crate's error."""
        try:
            return crypto.parse_ulid(urllib.parse.unquote(raw))
        except ValueError as error:
            raise admin_error(400, "Invalid ULID in path", str(error)) from None

    def _admin_json(self, raw: bytes, struct: str, fields: dict) -> dict:
        """axum's Json<T> for a serde struct; `fields` maps a name to (type, "required" | "default" | "option").

        Its rejections are plain text, as axum sends them: 415 without a JSON Content-Type, 400 for a
        body that is not JSON, 422 for JSON of the wrong shape (serde's message, without its line
        and column). Unknown fields are ignored, as serde does.
        """
        mime = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if not re.fullmatch(r"application/(json|[^/]+\+json)", mime):
            raise Reply(415, "Expected request with `Content-Type: application/json`", TEXT)
        try:
            value = json.loads(raw)
        except ValueError as error:
            raise Reply(400, f"Failed to parse the request body as JSON: {error}", TEXT) from None

        def unexpected(v) -> str:
            if isinstance(v, bool):
                return f"boolean `{str(v).lower()}`"
            if isinstance(v, int):
                return f"integer `{v}`"
            if isinstance(v, float):
                return f"floating point `{v}`"
            if isinstance(v, str):
                return f"string {rust_debug(v)}"
            return {dict: "map", list: "sequence"}.get(type(v), "null")

        def data_error(message: str) -> Reply:
            return Reply(422, f"Failed to deserialize the JSON body into the target type: {message}", TEXT)

        if not isinstance(value, dict):
            raise data_error(f"invalid type: {unexpected(value)}, expected struct {struct}")
        out = {}
        for name, (kind, presence) in fields.items():
            given = value.get(name)
            if name not in value or (given is None and presence == "option"):
                if presence == "required":
                    raise data_error(f"missing field `{name}`")
                out[name] = False if presence == "default" else None
            elif not isinstance(given, kind):
                expected = "a boolean" if kind is bool else "a string"
                raise data_error(f"{name}: invalid type: {unexpected(given)}, expected {expected}")
            else:
                out[name] = given
        return out

    def route_admin_user_by_username(self, match, resource):
        """GET users/by-username/{username} (v1/users/by_username.rs): 200, or 404 "User with username "x" not found"."""
        token = self._admin_token()
        username = urllib.parse.unquote(match.group(1))
        with self.app.pool.connection() as conn:
            self._admin_session(conn, token)
            user = store.find_user(conn, username)
        if user is None:
            raise admin_error(404, f"User with username {rust_debug(username)} not found")
        self.send(200, user_document(user, f"/api/admin/v1/users/by-username/{username}"))

    def route_admin_user(self, match, resource):
        """GET users/{id} (v1/users/get.rs): 200, or 404 "User ID <id> not found"."""
        token = self._admin_token()
        with self.app.pool.connection() as conn:
            self._admin_session(conn, token)
            user_id = self._admin_user_id(match.group(1))
            user = store.find_user_by_id(conn, user_id)
        if user is None:
            raise admin_error(404, f"User ID {user_id} not found")
        self.send(200, user_document(user))

    def route_admin_add_user(self, match, resource):
        """POST users {"username", ["skip_homeserver_check"], ["displayname"], ["avatar_url"]} (v1/users/add.rs).

        As MAS: 409 "User already exists" (any case), 400 "Username is not valid", 409 "Username is
        reserved by the homeserver" unless skip_homeserver_check; then the user (not admin) is
        created and provisioned on the homeserver right away, not through a job: if that fails,
        nothing is kept and the answer is 500 with the homeserver error. 201 with the user.
        The stand-in does not pass `avatar_url` on to the homeserver.
        """
        raw = self.body()
        token = self._admin_token()
        with self.app.pool.connection() as conn:
            self._admin_session(conn, token)
            body = self._admin_json(raw, "AddUserRequest", {
                "username": (str, "required"), "skip_homeserver_check": (bool, "default"),
                "displayname": (str, "option"), "avatar_url": (str, "option"),
            })  # fmt: skip
            username = body["username"]
            if store.find_user(conn, username) is not None:
                raise admin_error(409, "User already exists")
            if not username_valid(username):
                raise admin_error(400, "Username is not valid")
            if body["avatar_url"] is not None:
                log.warn(TARGET, "avatar_url is not passed on to the homeserver by the MAS stand-in")
            try:
                if not self.app.homeserver.is_localpart_available(username):
                    if not body["skip_homeserver_check"]:
                        raise admin_error(409, "Username is reserved by the homeserver")
                    log.warn(TARGET, f"Skipped homeserver check for username {username}")
                with transaction(conn):
                    user_id = store.create_user(conn, username, None, False, body["displayname"])
                    store.provision(conn, self.app.homeserver, store.find_user_by_id(conn, user_id))
            except HomeserverError as error:
                log.error(TARGET, f"Could not create the user: {error}")
                raise admin_error(500, str(error)) from None
            user = store.find_user_by_id(conn, user_id)
        log.info(TARGET, "User created through the admin API", user__id=user_id, user__username=username)
        self.send(201, user_document(user))

    def route_admin_set_password(self, match, resource):
        """POST users/{id}/set-password {"password", ["skip_password_check"]} (v1/users/set_password.rs).

        As MAS: 403 "Password auth is disabled", 404 "User ID <id> not found", 400 "Password is too
        weak" (below passwords.minimum_complexity, unless skip_password_check); then 204, and the
        password works for the compat m.login.password login.
        """
        raw = self.body()
        token = self._admin_token()
        with self.app.pool.connection() as conn:
            self._admin_session(conn, token)
            user_id = self._admin_user_id(match.group(1))
            body = self._admin_json(raw, "Request", {"password": (str, "required"),
                                                     "skip_password_check": (bool, "option")})  # fmt: skip
            if not self.app.passwords_enabled:
                raise admin_error(403, "Password auth is disabled")
            if store.find_user_by_id(conn, user_id) is None:
                raise admin_error(404, f"User ID {user_id} not found")
            skip = bool(body["skip_password_check"])
            log.info(TARGET, "skip_password_check", skip_password_check=str(skip).lower())
            if not skip and crypto.password_score(body["password"]) < self.app.minimum_complexity:
                raise admin_error(400, "Password is too weak")
            store.set_password(conn, user_id, body["password"])
        log.info(TARGET, "Password set through the admin API", user__id=user_id)
        self.send(204)

    def route_admin_set_admin(self, match, resource):
        """POST users/{id}/set-admin {"admin": bool} (v1/users/set_admin.rs): 200 with the user, linked to
        /api/admin/v1/users/<id>/set-admin; 404 "User ID <id> not found". Sessions already started keep
        their scopes; a compat password login never gets urn:synapse:admin:* (MAS starts those
        sessions with is_synapse_admin = false)."""
        raw = self.body()
        token = self._admin_token()
        with self.app.pool.connection() as conn:
            self._admin_session(conn, token)
            user_id = self._admin_user_id(match.group(1))
            body = self._admin_json(raw, "UserSetAdminRequest", {"admin": (bool, "required")})
            if store.find_user_by_id(conn, user_id) is None:
                raise admin_error(404, f"User ID {user_id} not found")
            store.set_admin(conn, user_id, body["admin"])
            user = store.find_user_by_id(conn, user_id)
        log.info(TARGET, "User admin flag set through the admin API", user__id=user_id, admin=body["admin"])
        self.send(200, user_document(user, f"/api/admin/v1/users/{user_id}/set-admin"))

    def _admin_list(self, kind: str, base: str, filters: dict, query) -> None:
        """A PaginatedResponse (crates/handlers/src/admin/response.rs) of the first page, ordered by ID as MAS's
        pages are. `query(conn, filter_values)` returns (id, attributes) rows. Of params.rs only `page[first]`
        (1 to 100, default 10) and `count` (true) are taken; any other parameter is refused as not implemented
        rather than ignored, so that no test comes to depend on a stand-in that answers what MAS would not."""
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        unknown = sorted(set(params) - set(filters) - {"page[first]", "count"})
        if unknown or params.get("count", "true") != "true":
            raise admin_error(501, f"Not implemented by the MAS stand-in (a test double): {unknown or 'count'}")
        try:
            first = int(params.get("page[first]", "10"))
        except ValueError as error:
            raise admin_error(400, "Invalid pagination parameters", str(error)) from None
        if not 1 <= first <= 100:
            raise admin_error(400, "Invalid pagination parameters", "page[first] must be between 1 and 100")
        values = {}
        for name, choices in filters.items():  # choices None: any value
            if name in params:
                if choices is not None and params[name] not in choices:
                    raise admin_error(400, "Invalid filter parameters")
                values[name] = params[name]
        token = self._admin_token()
        with self.app.pool.connection() as conn:
            self._admin_session(conn, token)
            found = sorted(query(conn, values))
        page = found[:first]
        filtered = base + "".join(f"{'?' if i == 0 else '&'}{k}={v}" for i, (k, v) in enumerate(values.items()))
        sep = "&" if "?" in filtered else "?"
        links = {"self": f"{filtered}{sep}page[first]={first}", "first": f"{filtered}{sep}page[first]={first}",
                 "last": f"{filtered}{sep}page[last]={first}"}  # fmt: skip
        if len(found) > first:
            links["next"] = f"{filtered}{sep}page[after]={page[-1][0]}&page[first]={first}"
        data = [{"type": kind, "id": id_, "attributes": attributes, "links": {"self": f"{base}/{id_}"},
                 "meta": {"page": {"cursor": id_}}} for id_, attributes in page]  # fmt: skip
        self.send(200, {"meta": {"count": len(found)}, "data": data, "links": links})

    def route_admin_oauth2_clients(self, match, resource):
        """GET oauth2-clients (v1/oauth2_clients/list.rs), with `filter[client-kind]`. A static client's grant
        types are the four `config sync` sets (storage-pg oauth2/client.rs upsert_static)."""

        def query(conn, values):
            kind = values.get("filter[client-kind]")
            for row in store.rows(conn, "SELECT client_id, client_name, is_static, metadata FROM oauth2_clients"):
                if kind is not None and row["is_static"] != (kind == "static"):
                    continue
                metadata = json.loads(row["metadata"]) if row["metadata"] else {}
                grants = STATIC_GRANT_TYPES if row["is_static"] else metadata.get("grant_types", ["authorization_code"])
                yield row["client_id"], {
                    "client_id": row["client_id"], "client_name": row["client_name"] or metadata.get("client_name"),
                    "client_uri": metadata.get("client_uri"), "logo_uri": metadata.get("logo_uri"),
                    "redirect_uris": metadata.get("redirect_uris", []), "grant_types": grants,
                    "is_static": row["is_static"],
                }  # fmt: skip

        self._admin_list("oauth2-client", "/api/admin/v1/oauth2-clients",
                         {"filter[client-kind]": ("static", "dynamic")}, query)  # fmt: skip

    def route_admin_upstream_oauth_providers(self, match, resource):
        """GET upstream-oauth-providers (v1/upstream_oauth_providers/list.rs), with `filter[enabled]`."""

        def query(conn, values):
            enabled = values.get("filter[enabled]")
            for row in store.rows(conn, "SELECT * FROM upstream_oauth_providers"):
                if enabled is not None and (row["disabled_at"] is None) != (enabled == "true"):
                    continue
                yield row["upstream_oauth_provider_id"], {
                    "issuer": row["issuer"], "human_name": row["human_name"], "brand_name": row["brand_name"],
                    "created_at": timestamp(row["created_at"]), "disabled_at": timestamp(row["disabled_at"]),
                    "registration_token_required": False,
                }  # fmt: skip

        self._admin_list("upstream-oauth-provider", "/api/admin/v1/upstream-oauth-providers",
                         {"filter[enabled]": ("true", "false")}, query)  # fmt: skip

    def route_admin_upstream_oauth_links(self, match, resource):
        """GET upstream-oauth-links (v1/upstream_oauth_links/list.rs), with `filter[user]`, `filter[provider]` and
        `filter[subject]`; a user or provider the filter names that does not exist is a 404, as in MAS."""

        def query(conn, values):
            for name, table, column, what in (("filter[user]", "users", "user_id", "User"),
                                              ("filter[provider]", "upstream_oauth_providers",
                                               "upstream_oauth_provider_id", "Provider")):  # fmt: skip
                if name in values and not store.one(
                    conn, f"SELECT 1 FROM {table} WHERE {column} = :id", id=values[name]
                ):
                    raise admin_error(404, f"{what} ID {values[name]} not found")
            for row in store.rows(conn, "SELECT * FROM upstream_oauth_links"):
                if any(
                    values.get(f"filter[{key}]", row[column]) != row[column]
                    for key, column in (
                        ("user", "user_id"),
                        ("provider", "upstream_oauth_provider_id"),
                        ("subject", "subject"),
                    )
                ):
                    continue
                yield row["upstream_oauth_link_id"], {
                    "created_at": timestamp(row["created_at"]), "provider_id": row["upstream_oauth_provider_id"],
                    "subject": row["subject"], "user_id": row["user_id"],
                    "human_account_name": row["human_account_name"],
                }  # fmt: skip

        self._admin_list("upstream-oauth-link", "/api/admin/v1/upstream-oauth-links",
                         {"filter[user]": None, "filter[provider]": None, "filter[subject]": None}, query)  # fmt: skip

    def route_admin_other(self, match, resource):
        """The rest of MAS's admin API, which the stand-in does not implement: 501 once the caller is authorised."""
        self.body()
        token = self._admin_token()
        with self.app.pool.connection() as conn:
            self._admin_session(conn, token)
        raise admin_error(501, "Not implemented by the MAS stand-in (a test double)")

    # ------------------------------------------------------------ pages, assets, the rest

    def route_login_page(self, match, resource):
        """The login page (crates/handlers/src/views/login.rs): oauth.login_page."""
        oauth.login_page(self)

    def route_login_post(self, match, resource):
        oauth.login_post(self)

    def route_authorize(self, match, resource):
        oauth.authorize(self)

    def route_consent(self, match, resource):
        oauth.consent_page(self, match.group(1))

    def route_consent_post(self, match, resource):
        oauth.consent_post(self, match.group(1))

    def route_oauth2_registration(self, match, resource):
        oauth.register(self)

    def route_register_password(self, match, resource):
        """GET /register/password (crates/handlers/src/views/register/password.rs): without password registration,
        a redirect to the login page; with it, the registration form."""
        if not self.app.password_registration_enabled:
            raise Reply(303, "", {"Location": f"{self.app.public}login"})
        self.send(200, _page("Create an account", '<form method="post" action="/register/password">'
                             '<input name="username"><input name="email"><input name="password" type="password">'
                             "</form>"))  # fmt: skip

    def route_register_password_post(self, match, resource):
        """POST /register/password: 405 without password registration (password.rs); the stand-in registers no one."""
        self.body()
        if not self.app.password_registration_enabled:
            raise Reply(405, "")
        raise Reply(501, _page("Not implemented", "The MAS stand-in does not register users through this form."))

    def route_human(self, match, resource):
        self.send(200, _page("Matrix Authentication Service", "Sign-in pages are not implemented by this stand-in; "
                             "Matrix clients log in with a password through the compatibility API."))  # fmt: skip

    def route_graphql(self, match, resource):
        self.send(200, {"data": None, "errors": [{"message": "GraphQL is not implemented by the MAS stand-in"}]})

    def route_connection_info(self, match, resource):
        self.send(200, f"Connected from {self.client_address[0]}\n", {"Content-Type": "text/plain"})

    def route_asset(self, match, resource):
        root = Path(resource.get("path") or "./share/assets/").resolve()
        wanted = (root / urllib.parse.unquote(match.group(1))).resolve()
        if not wanted.is_relative_to(root) or not wanted.is_file():
            raise Reply(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
        kind = mimetypes.guess_type(wanted.name)[0] or "application/octet-stream"
        self.send(200, wanted.read_bytes(), {"Content-Type": kind, "Cache-Control": "public, max-age=31536000"})


# ---------------------------------------------------------------- the server


def _addresses(bind: dict) -> list[tuple]:
    """Socket addresses to try for one bind, in order; MAS binds the first that works."""
    if "address" in bind:
        match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([0-9.]+):(\d+)", bind["address"])
        if not match:
            raise Fatal(f"could not parse listener address {bind['address']}")
        host, port = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return [(family, host, int(port))]
    if "port" in bind:
        if bind.get("host") is None:
            return [(socket.AF_INET6, "::", bind["port"]), (socket.AF_INET, "0.0.0.0", bind["port"])]
        try:
            infos = socket.getaddrinfo(bind["host"], bind["port"], type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise Fatal(f"could not parse listener host {bind['host']}: {error}") from None
        return [(family, address[0], address[1]) for family, _, _, _, address in infos]
    raise Fatal(f"the MAS stand-in binds TCP host/port or address only, not {sorted(bind)}")


def _bind(bind: dict, handler) -> ThreadingHTTPServer:
    last = None
    for family, host, port in _addresses(bind):
        attributes = {"address_family": family, "daemon_threads": True, "request_queue_size": 128}
        server_class = type("Server", (ThreadingHTTPServer,), attributes)
        try:
            return server_class((host, port), handler)
        except OSError as error:
            last = error
    raise Fatal(f"could not bind address {bind}: {last}")


def _check_share(config: dict) -> None:
    """MAS loads its policy, templates, translations and assets manifest at start, from ./share by default."""
    policy = (config.get("policy") or {}).get("wasm_module") or "./share/policy.wasm"
    templates = config.get("templates") or {}
    wanted = [
        (policy, "failed to open OPA WASM policy file", False),
        (templates.get("path") or "./share/templates/", "Failed to load the templates", True),
        (templates.get("translations_path") or "./share/translations/", "Failed to load the translations", True),
        (templates.get("assets_manifest") or "./share/manifest.json", "Failed to load the assets manifest", False),
    ]
    for path, message, is_dir in wanted:
        if not (Path(path).is_dir() if is_dir else Path(path).is_file()):
            raise Fatal(f"{message} at {path} (relative to {Path.cwd()})")


def serve(config: dict, no_migrate: bool = False, no_sync: bool = False, no_worker: bool = False) -> int:
    target = "mas_cli::server"
    log.info(target, "Starting up", version=version())
    pool = Pool(config.get("database") or {})
    log.info(target, "Connecting to the database")
    # In crates/cli/src/commands/server.rs's order: database, migrations, encrypter, config sync, signing
    # keys, policy and templates, homeserver connection, mailer; each failure stops the start there.
    try:
        with pool.connection() as conn:
            if no_migrate:
                if pending(conn):
                    raise Fatal("The server is running with `--no-migrate` but there are pending migrations. Please "
                                "run them first with `mas-cli database migrate`, or omit the `--no-migrate` flag.")  # fmt: skip
            else:
                log.info(target, "Running pending database migrations")
                migrate(conn)
            key = cfg.encryption_key(config["secrets"])
            if no_sync:
                log.info(target, "Skipping configuration sync")
            else:
                upstream = (config.get("upstream_oauth2") or {}).get("providers") or []
                store.config_sync(conn, upstream, config.get("clients") or [], key, False, False,
                                  cfg.client_secret, cfg.provider_secret)  # fmt: skip
    except Unavailable as error:
        raise Fatal(str(error)) from None
    cfg.key_store(config["secrets"])
    _check_share(config)
    homeserver = from_config(config)
    if not no_worker and (config.get("email") or {}).get("transport") == "smtp":
        cfg.smtp_password(config)  # util.rs mailer_from_config reads email.password_file
    if cfg.passwords_enabled(config):
        # util.rs password_manager_from_config: passwords.rs `load()` reads each scheme's secret_file.
        for i, scheme in enumerate((config.get("passwords") or {}).get("schemes") or []):
            if scheme.get("secret_file") is not None:
                cfg.read_file(scheme["secret_file"], f"passwords.schemes[{i}].secret_file")
    worker = None if no_worker else store.Worker(pool, homeserver)
    app = App(config, pool, homeserver, key, worker)
    servers = []
    for listener in cfg.http(config).get("listeners") or []:
        resources = {r["name"]: r for r in listener["resources"]}
        prefix = (listener.get("prefix") or "").rstrip("/")
        if "prometheus" in resources and app.durations is None:
            log.warn(target, "A Prometheus resource was mounted on a listener, but the Prometheus exporter was not "
                             "setup in the config")  # fmt: skip
        handler = type("ListenerHandler", (Handler,), {"app": app, "resources": resources, "prefix": prefix,
                                                       "listener_name": listener.get("name")})  # fmt: skip
        for bind in listener["binds"]:
            server = _bind(bind, handler)
            servers.append(server)
            host, port = server.server_address[:2]
            shown = f"[{host}]" if ":" in host else host
            log.info(target, f"Listening on http://{shown}:{port}{prefix} with resources {sorted(resources)}")

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threads = [threading.Thread(target=s.serve_forever, name="http", daemon=True) for s in servers]
    if worker is not None:
        threads.append(threading.Thread(target=worker.run, args=(stop,), name="worker", daemon=True))
    for thread in threads:
        thread.start()
    while not stop.wait(0.5):
        pass
    log.info(target, "Shutting down")
    for server in servers:
        server.shutdown()
        server.server_close()
    if worker is not None:
        worker.wake.set()
    pool.close()
    return 0


def work(config: dict) -> int:
    """`mas-cli worker`: the task worker alone."""
    pool = Pool(config.get("database") or {})
    worker = store.Worker(pool, from_config(config))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    thread = threading.Thread(target=worker.run, args=(stop,), name="worker", daemon=True)
    thread.start()
    while not stop.wait(0.5):
        pass
    worker.wake.set()
    thread.join(timeout=5)
    pool.close()
    return 0
