"""`mas-cli server`: the HTTP listeners of `http.listeners`, each mounting only the resources it lists.

What each resource answers (paths as in MAS 1.22.0's router, below the listener's `prefix`):
- health:    GET /health -> 200 `ok` after `SELECT 1` on the database, else 500.
- discovery: GET /.well-known/openid-configuration (issuer = http.issuer or http.public_base,
             endpoints under public_base, account_management_uri = <public_base>account/).
- oauth:     POST /oauth2/introspect, GET /oauth2/keys.json; token/registration/revoke/userinfo refuse.
- compat:    /_matrix/client/{version}/login (GET flows, POST m.login.password), /logout, /logout/all,
             /refresh, /login/sso/redirect[/{idp}].
- human:     GET /, /login, /account/..., /complete-compat-sso/{id}: small HTML pages.
- assets:    GET /assets/<file> from the resource's `path` (default ./share/assets/).
- graphql, adminapi, prometheus, connection-info: minimal answers.
Anything else is a 404 with a JSON body.

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
from . import crypto, log, store, version
from .database import Pool, Unavailable, describe, migrate, pending
from .homeserver import HomeserverError, from_config

API_SCOPES = ("urn:matrix:client:api:*", "urn:matrix:org.matrix.msc2967.client:api:*")
DEVICE_SCOPE_PREFIXES = ("urn:matrix:client:device:", "urn:matrix:org.matrix.msc2967.client:device:")
ADMIN_SCOPE = "urn:synapse:admin:*"
TARGET = "mas_handlers"


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


def _page(title: str, text: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>"
            f"<body><h1>{title}</h1><p>{text}</p>"
            "<p><small>matrix-authentication-service test double (tests/mas_standin)</small></p></body></html>\n")  # fmt: skip


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

    def discovery(self) -> dict:
        p = self.public
        auth_methods = ["client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt", "none"]
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{p}authorize",
            "token_endpoint": f"{p}oauth2/token",
            "jwks_uri": f"{p}oauth2/keys.json",
            "registration_endpoint": f"{p}oauth2/registration",
            "scopes_supported": ["openid", "email"],
            "response_types_supported": ["code", "id_token", "code id_token"],
            "response_modes_supported": ["form_post", "query", "fragment"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials",
                                      "urn:ietf:params:oauth:grant-type:device_code"],
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint": f"{p}oauth2/revoke",
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "introspection_endpoint": f"{p}oauth2/introspect",
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "code_challenge_methods_supported": ["plain", "S256"],
            "userinfo_endpoint": f"{p}oauth2/userinfo",
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["iss", "sub", "aud", "iat", "exp", "nonce", "auth_time", "at_hash", "c_hash"],
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
            "prompt_values_supported": ["none", "login", "create"],
            "device_authorization_endpoint": f"{p}oauth2/device",
            "account_management_uri": f"{p}account/",
            "account_management_actions_supported": ["org.matrix.profile", "org.matrix.devices_list",
                                                     "org.matrix.device_view", "org.matrix.device_delete",
                                                     "org.matrix.cross_signing_reset"],
            "graphql_endpoint": f"{p}graphql",
        }  # fmt: skip


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mas-standin"
    sys_version = ""
    app: App
    resources: dict
    prefix: str
    ROUTES = [
        ("health", "GET", r"/health", "health"),
        ("prometheus", "GET", r"/metrics", "metrics"),
        ("discovery", "GET", r"/\.well-known/openid-configuration", "discovery"),
        ("discovery", "GET", r"/\.well-known/change-password", "change_password"),
        ("oauth", "GET", r"/oauth2/keys\.json", "jwks"),
        ("oauth", "POST", r"/oauth2/introspect", "introspect"),
        ("oauth", "POST", r"/oauth2/(token|revoke|registration|device)", "oauth_refused"),
        ("oauth", "GET", r"/oauth2/userinfo", "userinfo"),
        ("compat", "GET", r"/_matrix/client/[^/]+/login", "login_flows"),
        ("compat", "POST", r"/_matrix/client/[^/]+/login", "login"),
        ("compat", "POST", r"/_matrix/client/[^/]+/logout", "logout"),
        ("compat", "POST", r"/_matrix/client/[^/]+/logout/all", "logout_all"),
        ("compat", "POST", r"/_matrix/client/[^/]+/refresh", "refresh"),
        ("compat", "GET", r"/_matrix/client/[^/]+/login/sso/redirect(/[^/]*)?", "sso_redirect"),
        ("human", "GET", r"/|/login|/logout|/register|/authorize|/account/.*|/complete-compat-sso/[^/]+", "human"),
        ("graphql", "POST", r"/graphql", "graphql"),
        ("assets", "GET", r"/assets/(.+)", "asset"),
        ("adminapi", "GET", r"/api/admin/v1/.*", "adminapi"),
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
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

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
        started, self.status = time.monotonic(), 0
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
            took = f"{(time.monotonic() - started) * 1000:.1f}ms"
            log.info("mas_http", f"{self.command} {logged_path} {self.status}", duration=took)

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
        self.send(200, "# the MAS stand-in exports no metrics\n", {"Content-Type": "text/plain; version=0.0.4"})

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
        expected = crypto.decrypt(self.app.key, client["encrypted_client_secret"])
        if secret is None or not hmac.compare_digest(secret.encode(), expected.encode()):
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
        if kind != "compat_access_token" or session is None:
            return self.send(200, {"active": False})
        device = session["device_id"]
        scope = set(API_SCOPES)
        if self.headers.get("X-MAS-Supports-Device-Id") != "1":
            scope |= {prefix + device for prefix in DEVICE_SCOPE_PREFIXES}
        if session["is_synapse_admin"]:
            scope.add(ADMIN_SCOPE)
        issued = int(session["created_at"].timestamp())
        self.send(200, {
            "active": True, "scope": " ".join(sorted(scope)), "client_id": "legacy", "username": session["username"],
            "token_type": "access_token", "iat": issued, "nbf": issued, "sub": session["user_id"], "device_id": device,
        })  # fmt: skip

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
        body = self.json_body()
        kind = body.get("type")
        if kind == "m.login.token":
            raise matrix_error(403, "M_FORBIDDEN", "Invalid login token")
        if kind != "m.login.password" or not self.app.passwords_enabled:
            raise matrix_error(400, "M_UNKNOWN", "Invalid login type")
        identifier, user = body.get("identifier"), body.get("user")
        if user is None:  # the deprecated top-level `user` wins over `identifier`, as in Synapse
            if identifier is None:
                raise matrix_error(400, "M_BAD_JSON", "Missing property 'identifier")
            if not isinstance(identifier, dict) or identifier.get("type") != "m.id.user":
                raise matrix_error(400, "M_UNKNOWN", "Unsupported login identifier")
            user = identifier.get("user")
        password = body.get("password")
        device_id, display_name = body.get("device_id"), body.get("initial_device_display_name")
        if not isinstance(user, str) or not isinstance(password, str):
            raise matrix_error(400, "M_BAD_JSON", "Invalid login request")
        if (device_id is not None and not isinstance(device_id, str)) or (
            display_name is not None and not isinstance(display_name, str)
        ):
            raise matrix_error(400, "M_BAD_JSON", "Invalid login request")
        username = self.app.homeserver.localpart(user) or user
        with self.app.pool.connection() as conn:
            account = store.find_user(conn, username)
            if account is None or account["deactivated_at"] is not None:
                raise matrix_error(403, "M_FORBIDDEN", "Invalid username/password")
            if account["locked_at"] is not None:
                raise matrix_error(401, "M_USER_LOCKED", "User account has been locked")
            if not crypto.verify_password(password, account["hashed_password"]):
                raise matrix_error(403, "M_FORBIDDEN", "Invalid username/password")
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
        # The stand-in never issues refresh tokens, so none is valid.
        raise matrix_error(401, "M_UNKNOWN_TOKEN", "Invalid refresh token")

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

    # ------------------------------------------------------------ pages, assets, the rest

    def route_human(self, match, resource):
        self.send(200, _page("Matrix Authentication Service", "Sign-in pages are not implemented by this stand-in; "
                             "Matrix clients log in with a password through the compatibility API."))  # fmt: skip

    def route_graphql(self, match, resource):
        self.send(200, {"data": None, "errors": [{"message": "GraphQL is not implemented by the MAS stand-in"}]})

    def route_adminapi(self, match, resource):
        self.send(401, {"errors": [{"title": "Missing access token"}]})

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
    key = cfg.encryption_key(config["secrets"])
    log.info(target, "Connecting to the database")
    try:
        with pool.connection() as conn:
            if no_migrate:
                if pending(conn):
                    raise Fatal("The server is running with `--no-migrate` but there are pending migrations. Please "
                                "run them first with `mas-cli database migrate`, or omit the `--no-migrate` flag.")  # fmt: skip
            else:
                log.info(target, "Running pending database migrations")
                migrate(conn)
            if no_sync:
                log.info(target, "Skipping configuration sync")
            else:
                store.sync_clients(conn, config.get("clients") or [], key, False, False, cfg.client_secret)
    except Unavailable as error:
        raise Fatal(str(error)) from None
    _check_share(config)
    homeserver = from_config(config)
    worker = None if no_worker else store.Worker(pool, homeserver)
    app = App(config, pool, homeserver, key, worker)
    servers = []
    for listener in cfg.http(config).get("listeners") or []:
        resources = {r["name"]: r for r in listener["resources"]}
        prefix = (listener.get("prefix") or "").rstrip("/")
        handler = type("ListenerHandler", (Handler,), {"app": app, "resources": resources, "prefix": prefix})
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
