"""Test double for matrix-authentication-service (`mas-cli`).

The real MAS release cannot be downloaded on these machines; this stand-in lives under tests/, is
never selected or shipped by the product, and implements only what the deployment and the
end-to-end tests touch: `config check` (the MAS 1.22.0 JSON schema plus the file checks MAS does),
`database migrate` and `config sync` against PostgreSQL with the rendered credentials,
`manage register-user`, and a `server` with /health (checks the database), OIDC discovery,
/oauth2/introspect (Bearer shared secret, or a configured client with client_secret_basic) and the
compat login/logout that provision users and devices in Synapse through /_synapse/mas/*.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fastjsonschema
import pg8000.native
import yaml

HERE = Path(__file__).resolve().parent  # inside the zipapp: the archive file itself


def _resource(name: str) -> str:
    """A data file bundled beside this module (in the zipapp, or in the source tree)."""
    if HERE.is_file() and zipfile.is_zipfile(HERE):
        with zipfile.ZipFile(HERE) as z:
            return z.read(name).decode()
    return (HERE / name).read_text()


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} INFO mas_standin: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- configuration


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(paths: list[str]) -> dict:
    config: dict = {}
    for path in paths:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as error:
            raise SystemExit(f"ERROR mas_cli: could not read configuration file {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise SystemExit(f"ERROR mas_cli: configuration file {path} is not valid YAML: {error}") from None
        config = merge(config, loaded)
    return config


def _uri(value) -> bool:
    return isinstance(value, str) and bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", value))


def schema_problems(config: dict) -> list[str]:
    validate = fastjsonschema.compile(
        json.loads(_resource("config.schema.json")),
        formats={
            "uri": _uri,
            "ip": lambda v: True,
            "uint16": lambda v: True,
            "uint8": lambda v: True,
            "uint": lambda v: True,
            "uint32": lambda v: True,
            "uint64": lambda v: True,
        },
        use_default=False,
    )
    try:
        validate(config)
    except fastjsonschema.JsonSchemaValueException as error:
        return [f"{error.name.replace('data.', '', 1)}: {error.message}"]
    return []


def _readable(path: str, key: str, problems: list[str]) -> str | None:
    try:
        return Path(path).read_text()
    except OSError as error:
        problems.append(f"{key}: could not read file {path}: {error.strerror}")
        return None


def config_problems(config: dict) -> list[str]:
    problems = schema_problems(config)
    if problems:
        return problems
    matrix = config.get("matrix") or {}
    if matrix.get("secret") and matrix.get("secret_file"):
        problems.append("matrix: `secret` and `secret_file` are mutually exclusive")
    elif not matrix.get("secret") and not matrix.get("secret_file"):
        problems.append("matrix: one of `secret` or `secret_file` is required")
    elif matrix.get("secret_file"):
        _readable(matrix["secret_file"], "matrix.secret_file", problems)
    database = config.get("database") or {}
    if database.get("uri") and any(
        database.get(k) for k in ("host", "port", "socket", "username", "password", "database")
    ):
        problems.append("database: `uri` cannot be combined with host, port, socket, username, password or database")
    if database.get("password") and database.get("password_file"):
        problems.append("database: `password` and `password_file` are mutually exclusive")
    if database.get("password_file"):
        _readable(database["password_file"], "database.password_file", problems)
    secrets_config = config.get("secrets") or {}
    key = secrets_config.get("encryption")
    if secrets_config.get("encryption_file"):
        key = _readable(secrets_config["encryption_file"], "secrets.encryption_file", problems)
    if key is None and not problems:
        problems.append("secrets: one of `encryption` or `encryption_file` is required")
    elif key is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", key.strip()):
        problems.append("secrets.encryption: expected 32 bytes encoded as 64 hex digits")
    for i, item in enumerate(secrets_config.get("keys") or []):
        if item.get("key_file"):
            content = _readable(item["key_file"], f"secrets.keys[{i}].key_file", problems)
            if content is not None and "PRIVATE KEY" not in content:
                problems.append(f"secrets.keys[{i}].key_file: {item['key_file']} holds no PEM private key")
    for i, client in enumerate(config.get("clients") or []):
        if client.get("client_secret_file"):
            _readable(client["client_secret_file"], f"clients[{i}].client_secret_file", problems)
    return problems


def shared_secret(config: dict) -> str:
    matrix = config["matrix"]
    return matrix.get("secret") or Path(matrix["secret_file"]).read_text().strip()


# ---------------------------------------------------------------- database


def connect(config: dict) -> pg8000.native.Connection:
    db = config.get("database") or {}
    if db.get("uri"):
        url = urllib.parse.urlsplit(db["uri"])
        args = {"host": url.hostname, "port": url.port or 5432, "user": urllib.parse.unquote(url.username or ""),
                "password": urllib.parse.unquote(url.password or "") or None, "database": url.path.lstrip("/") or None}  # fmt: skip
    else:
        password = db.get("password")
        if db.get("password_file"):
            password = Path(db["password_file"]).read_text().strip()
        args = {"host": db.get("host") or "localhost", "port": db.get("port") or 5432, "user": db.get("username") or "",
                "password": password, "database": db.get("database")}  # fmt: skip
        if db.get("socket"):
            args["unix_sock"] = f"{db['socket']}/.s.PGSQL.{args['port']}"
            del args["host"]
    return pg8000.native.Connection(**args, timeout=10)


MIGRATIONS = [
    """CREATE TABLE IF NOT EXISTS users (
        username TEXT PRIMARY KEY, password_hash TEXT, admin BOOLEAN NOT NULL DEFAULT FALSE,
        display_name TEXT, provisioned BOOLEAN NOT NULL DEFAULT FALSE, created_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS compat_sessions (
        access_token TEXT PRIMARY KEY, username TEXT NOT NULL REFERENCES users(username), device_id TEXT NOT NULL,
        finished_at TIMESTAMPTZ, created_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS oauth2_clients (
        client_id TEXT PRIMARY KEY, client_auth_method TEXT NOT NULL, client_secret TEXT)""",
]


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000)
    return f"pbkdf2-sha256$100000${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    _, rounds, salt, digest = stored.split("$")
    actual = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(rounds))
    return hmac.compare_digest(actual, base64.b64decode(digest))


# ---------------------------------------------------------------- homeserver


def synapse_call(config: dict, action: str, body: dict) -> None:
    """POST to Synapse's MAS API (/_synapse/mas/<action>) with the shared secret."""
    url = config["matrix"].get("endpoint", "http://localhost:8008/").rstrip("/") + f"/_synapse/mas/{action}"
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {shared_secret(config)}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def provision(config: dict, db, username: str) -> None:
    synapse_call(config, "provision_user", {"localpart": username})
    db.run("UPDATE users SET provisioned = TRUE WHERE username = :u", u=username)


def provisioner(config: dict) -> None:
    """Like MAS's job queue: users registered while Synapse was away are provisioned once it answers."""
    while True:
        try:
            db = connect(config)
            for (username,) in db.run("SELECT username FROM users WHERE NOT provisioned"):
                provision(config, db, username)
                log(f"Provisioned user {username} on the homeserver")
            db.close()
        except Exception as error:  # retried on the next round, like a job
            log(f"provisioning: will retry: {error}")
        time.sleep(1)


# ---------------------------------------------------------------- HTTP


COMPAT = re.compile(r"^/_matrix/client/(v3|r0)/(login|logout|refresh)(/.*)?$")
API_SCOPE = "urn:matrix:org.matrix.msc2967.client:api:*"
DEVICE_SCOPE = "urn:matrix:org.matrix.msc2967.client:device:"


def make_handler(config: dict, resources: set[str]):
    public = config["http"]["public_base"].rstrip("/") + "/"
    issuer = (config["http"].get("issuer") or public).rstrip("/") + "/"
    homeserver = config["matrix"].get("homeserver", "localhost:8008")

    class Handler(BaseHTTPRequestHandler):
        server_version = "mas-standin"

        def log_message(self, fmt, *args):  # method and path only: never bodies or headers
            log(f"{self.command} {self.path.split('?')[0]} -> {args[1] if len(args) > 1 else ''}")

        def reply(self, status: int, body=None, headers=None):
            data = (
                json.dumps(body).encode()
                if not isinstance(body, (bytes, str))
                else (body if isinstance(body, bytes) else body.encode())
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if not isinstance(body, (bytes, str)) else "text/html")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, status: int, errcode: str, message: str):
            self.reply(status, {"errcode": errcode, "error": message})

        def body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def bearer(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            return auth[7:].strip() if auth.startswith("Bearer ") else None

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/health" and "health" in resources:
                try:
                    db = connect(config)
                    db.run("SELECT 1")
                    db.close()
                except Exception as error:
                    return self.reply(503, {"status": "database unreachable", "detail": str(error)})
                return self.reply(200, "ok")
            if path == "/.well-known/openid-configuration" and "discovery" in resources:
                return self.reply(200, {
                    "issuer": issuer, "authorization_endpoint": f"{public}authorize", "token_endpoint": f"{public}oauth2/token",
                    "jwks_uri": f"{public}oauth2/keys.json", "registration_endpoint": f"{public}oauth2/registration",
                    "introspection_endpoint": f"{public}oauth2/introspect", "revocation_endpoint": f"{public}oauth2/revoke",
                    "account_management_uri": f"{public}account/", "response_types_supported": ["code"],
                    "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
                })  # fmt: skip
            if path == "/oauth2/keys.json" and "oauth" in resources:
                return self.reply(200, {"keys": []})
            if COMPAT.match(path) and "compat" in resources:
                if path.endswith("/login"):
                    return self.reply(
                        200,
                        {"flows": [{"type": "m.login.password"}, {"type": "m.login.sso"}, {"type": "m.login.token"}]},
                    )
                if path.endswith("/login/sso/redirect"):
                    return self.reply(303, "", {"Location": f"{public}login"})
            if "human" in resources and (path == "/" or path in ("/login", "/account/")):
                return self.reply(200, "<html><body>matrix-authentication-service stand-in</body></html>")
            self.error(404, "M_NOT_FOUND", "Not found")

        def do_PUT(self):
            self.error(404, "M_NOT_FOUND", "Not found")

        def do_POST(self):
            path = self.path.split("?")[0]
            if path == "/oauth2/introspect" and "oauth" in resources:
                return self.introspect()
            match = COMPAT.match(path)
            if match and "compat" in resources:
                action, rest = match.group(2), match.group(3) or ""
                if action == "login" and not rest:
                    return self.login()
                if action == "logout":
                    return self.logout(everything=rest == "/all")
                if action == "refresh":
                    return self.error(
                        400, "M_UNKNOWN_TOKEN", "Refresh tokens are not supported by compat sessions here"
                    )
            self.error(404, "M_NOT_FOUND", "Not found")

        def caller_allowed(self, db) -> bool:
            token = self.bearer()
            if token is not None:
                return hmac.compare_digest(token, shared_secret(config))
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
                rows = db.run(
                    "SELECT client_secret FROM oauth2_clients WHERE client_id = :c AND client_auth_method = 'client_secret_basic'",
                    c=client_id,
                )
                return (
                    bool(rows)
                    and rows[0][0] is not None
                    and hmac.compare_digest(rows[0][0], urllib.parse.unquote(secret))
                )
            return False

        def introspect(self):
            form = urllib.parse.parse_qs(self.body().decode())
            db = connect(config)
            try:
                if not self.caller_allowed(db):
                    return self.reply(401, {"error": "invalid_client"})
                token = (form.get("token") or [""])[0]
                rows = db.run(
                    "SELECT s.username, s.device_id, u.admin FROM compat_sessions s JOIN users u USING (username)"
                    " WHERE s.access_token = :t AND s.finished_at IS NULL", t=token,
                )  # fmt: skip
            finally:
                db.close()
            if not rows:
                return self.reply(200, {"active": False})
            username, device_id, admin = rows[0]
            scope = [API_SCOPE, DEVICE_SCOPE + device_id] + (["urn:synapse:admin:*"] if admin else [])
            self.reply(200, {
                "active": True, "scope": " ".join(scope), "client_id": "01FSHN9AG0MZAA6S4AF7CTV32E", "username": username,
                "sub": username, "device_id": device_id, "token_type": "access_token", "iat": int(time.time()),
            })  # fmt: skip

        def login(self):
            try:
                body = json.loads(self.body() or b"{}")
            except ValueError:
                return self.error(400, "M_NOT_JSON", "Body is not JSON")
            if body.get("type") != "m.login.password":
                return self.error(400, "M_UNKNOWN", "Unsupported login type")
            user = (body.get("identifier") or {}).get("user") or body.get("user") or ""
            localpart = user[1:].split(":", 1)[0] if user.startswith("@") else user
            db = connect(config)
            try:
                rows = db.run("SELECT password_hash FROM users WHERE username = :u", u=localpart)
                if not rows or not verify_password(str(body.get("password", "")), rows[0][0]):
                    return self.error(403, "M_FORBIDDEN", "Invalid username or password")
                provision(config, db, localpart)
                device_id = body.get("device_id") or "".join(
                    secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(10)
                )
                upsert = {"localpart": localpart, "device_id": device_id}
                if body.get("initial_device_display_name"):
                    upsert["display_name"] = body["initial_device_display_name"]
                synapse_call(config, "upsert_device", upsert)
                token = "mct_" + secrets.token_urlsafe(30)
                db.run("INSERT INTO compat_sessions (access_token, username, device_id) VALUES (:t, :u, :d)",
                       t=token, u=localpart, d=device_id)  # fmt: skip
            except urllib.error.URLError as error:
                return self.error(503, "M_UNKNOWN", f"Homeserver unreachable: {error}")
            finally:
                db.close()
            self.reply(200, {"user_id": f"@{localpart}:{homeserver}", "access_token": token, "device_id": device_id,
                             "home_server": homeserver})  # fmt: skip

        def logout(self, everything: bool):
            token = self.bearer()
            db = connect(config)
            try:
                rows = db.run(
                    "SELECT username FROM compat_sessions WHERE access_token = :t AND finished_at IS NULL",
                    t=token or "",
                )
                if not rows:
                    return self.error(401, "M_UNKNOWN_TOKEN", "Invalid access token")
                username = rows[0][0]
                where = "username = :w" if everything else "access_token = :w"
                ended = db.run(f"UPDATE compat_sessions SET finished_at = now() WHERE {where} AND finished_at IS NULL RETURNING device_id",
                               w=username if everything else token)  # fmt: skip
                for (device_id,) in ended:
                    synapse_call(config, "delete_device", {"localpart": username, "device_id": device_id})
            finally:
                db.close()
            self.reply(200, {})

    return Handler


def serve(config: dict) -> None:
    servers = []
    for listener in config["http"].get("listeners") or []:
        resources = {r["name"] for r in listener["resources"]}
        for bind in listener["binds"]:
            if "address" in bind:
                host, _, port = bind["address"].rpartition(":")
                address = (host.strip("[]"), int(port))
            else:
                address = (bind.get("host") or "0.0.0.0", bind["port"])
            servers.append(ThreadingHTTPServer(address, make_handler(config, resources)))
            log(f"Listening on http://{address[0]}:{address[1]} resources={sorted(resources)}")
    threading.Thread(target=provisioner, args=(config,), daemon=True).start()
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", action="append", dest="sub_config")
    parser = argparse.ArgumentParser(prog="mas-cli", parents=[])
    parser.add_argument("-V", "--version", action="version", version=f"mas-cli {_resource('VERSION').strip()}")
    parser.add_argument("-c", "--config", action="append")
    commands = parser.add_subparsers(dest="command", required=True)
    config_cmd = commands.add_parser("config").add_subparsers(dest="sub", required=True)
    config_cmd.add_parser("check", parents=[common])
    sync = config_cmd.add_parser("sync", parents=[common])
    sync.add_argument("--prune", action="store_true")
    sync.add_argument("--dry-run", action="store_true")
    commands.add_parser("database").add_subparsers(dest="sub", required=True).add_parser("migrate", parents=[common])
    commands.add_parser("server", parents=[common])
    manage = commands.add_parser("manage").add_subparsers(dest="sub", required=True)
    register = manage.add_parser("register-user", parents=[common])
    register.add_argument("--username", required=True)
    register.add_argument("--password")
    register.add_argument("--email", action="append")
    register.add_argument("--display-name")
    register.add_argument("--admin", action="store_true")
    register.add_argument("--no-admin", action="store_true")
    register.add_argument("--yes", action="store_true")
    register.add_argument("--ignore-password-complexity", action="store_true")
    set_password = manage.add_parser("set-password", parents=[common])
    set_password.add_argument("username")
    set_password.add_argument("password")
    set_password.add_argument("--ignore-complexity", action="store_true")
    args = parser.parse_args(argv)

    paths = (args.config or []) + (getattr(args, "sub_config", None) or []) or [
        os.environ.get("MAS_CONFIG", "config.yaml")
    ]
    config = load_config(paths)
    problems = config_problems(config)
    if problems:
        for problem in problems:
            print(f"ERROR mas_cli::config: {problem}", file=sys.stderr)
        print(f"ERROR mas_cli: configuration file is invalid path={paths}", file=sys.stderr)
        return 1
    if args.command == "config" and args.sub == "check":
        log(f"Configuration file looks good path={paths}")
        return 0
    if args.command == "server":
        serve(config)
        return 0
    try:
        db = connect(config)
    except Exception as error:
        print(f"ERROR mas_cli: could not connect to the database: {error}", file=sys.stderr)
        return 1
    if args.command == "database":
        for statement in MIGRATIONS:
            db.run(statement)
        log("Database migrations applied")
    elif args.command == "config":
        wanted = {}
        for client in config.get("clients") or []:
            secret = client.get("client_secret")
            if client.get("client_secret_file"):
                secret = Path(client["client_secret_file"]).read_text().strip()
            wanted[client["client_id"]] = (client["client_auth_method"], secret)
        existing = {row[0] for row in db.run("SELECT client_id FROM oauth2_clients")}
        log(f"Syncing clients defined in config to database prune={args.prune} dry_run={args.dry_run}")
        for client_id, (method, secret) in wanted.items():
            log(f"{'Updating' if client_id in existing else 'Adding'} client client.id={client_id}")
            if not args.dry_run:
                db.run("INSERT INTO oauth2_clients VALUES (:c, :m, :s) ON CONFLICT (client_id) DO UPDATE"
                       " SET client_auth_method = :m, client_secret = :s", c=client_id, m=method, s=secret)  # fmt: skip
        for client_id in sorted(existing - set(wanted)) if args.prune else []:
            log(f"Deleting client client.id={client_id}")
            if not args.dry_run:
                db.run("DELETE FROM oauth2_clients WHERE client_id = :c", c=client_id)
    elif args.sub == "register-user":
        if db.run("SELECT 1 FROM users WHERE username = :u", u=args.username):
            print(f"ERROR mas_cli: User {args.username} already exists", file=sys.stderr)
            return 1
        db.run("INSERT INTO users (username, password_hash, admin, display_name) VALUES (:u, :p, :a, :d)",
               u=args.username, p=hash_password(args.password) if args.password else None, a=args.admin,
               d=args.display_name)  # fmt: skip
        log(f"User registered username={args.username} admin={args.admin}")
    elif args.sub == "set-password":
        if not db.run(
            "UPDATE users SET password_hash = :p WHERE username = :u RETURNING 1",
            p=hash_password(args.password),
            u=args.username,
        ):
            print(f"ERROR mas_cli: User {args.username} not found", file=sys.stderr)
            return 1
        log(f"Password changed username={args.username}")
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
