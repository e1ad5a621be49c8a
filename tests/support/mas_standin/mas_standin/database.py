"""PostgreSQL: the connection MAS makes from the `database` section, and the stand-in's own tables.

Connection settings follow MAS (sqlx's PgConnectOptions): `uri`, or `host`/`port`/`socket`/
`username`/`password`/`password_file`/`database`, with libpq's environment defaults (PGHOST,
PGPORT, PGUSER, PGPASSWORD, PGDATABASE); without a host, the Unix socket in /var/run/postgresql
(or /tmp) when one is there, else localhost. Passwords go through pg8000, which speaks
scram-sha-256 and md5.

The schema is the stand-in's, not MAS's: users, compatibility sessions with their access tokens,
OAuth 2.0 clients from the config, OAuth 2.0 sessions with their access tokens (client_credentials
grants, for the admin API), and a table of applied migrations. Migrations run in one transaction
under an advisory lock, each once and in order: `database migrate` is idempotent and brings a
database made by an older stand-in up to date.
"""

import getpass
import os
import queue
import ssl
import threading
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

from . import log
from .config import read_file

APPLICATION_NAME = "matrix-authentication-service"
MIGRATIONS = [
    (1, "users, compatibility sessions and OAuth 2.0 clients", [
        """CREATE TABLE users (
            user_id TEXT PRIMARY KEY,  -- a ULID, also the `sub` given to Synapse
            username TEXT NOT NULL UNIQUE,
            hashed_password TEXT,
            can_request_admin BOOLEAN NOT NULL DEFAULT FALSE,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            locked_at TIMESTAMPTZ,
            deactivated_at TIMESTAMPTZ,
            -- the provisioning job: pending until Synapse has the user (and this display name)
            provision_pending BOOLEAN NOT NULL DEFAULT TRUE,
            pending_display_name TEXT,
            provisioned_at TIMESTAMPTZ,
            -- the device sync job: Synapse's devices must be made to match the active sessions
            devices_dirty BOOLEAN NOT NULL DEFAULT FALSE
        )""",
        """CREATE TABLE compat_sessions (
            compat_session_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
            device_id TEXT NOT NULL,
            human_name TEXT,
            is_synapse_admin BOOLEAN NOT NULL DEFAULT FALSE,
            access_token TEXT NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            finished_at TIMESTAMPTZ
        )""",
        "CREATE INDEX compat_sessions_user_active ON compat_sessions (user_id) WHERE finished_at IS NULL",
        """CREATE TABLE oauth2_clients (
            client_id TEXT PRIMARY KEY,
            client_auth_method TEXT NOT NULL,
            encrypted_client_secret TEXT,
            client_name TEXT,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
    ]),
    (2, "OAuth 2.0 sessions of the client_credentials grant, with their access tokens", [
        """CREATE TABLE oauth2_sessions (
            oauth2_session_id TEXT PRIMARY KEY,
            client_id TEXT NOT NULL REFERENCES oauth2_clients (client_id) ON DELETE CASCADE,
            scope TEXT NOT NULL,  -- as MAS serialises a Scope: sorted tokens joined by spaces
            access_token TEXT NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            expires_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ
        )""",
    ]),
    (3, "upstream OAuth 2.0 providers and their users' links", [
        """CREATE TABLE upstream_oauth_providers (
            upstream_oauth_provider_id TEXT PRIMARY KEY,  -- the config's ULID
            issuer TEXT,
            human_name TEXT,
            brand_name TEXT,
            scope TEXT NOT NULL,
            client_id TEXT NOT NULL,
            encrypted_client_secret TEXT,
            token_endpoint_auth_method TEXT NOT NULL,
            claims_imports TEXT NOT NULL DEFAULT '{}',  -- JSON
            ui_order INTEGER NOT NULL DEFAULT 0,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            disabled_at TIMESTAMPTZ  -- soft-deleted: no longer in the config
        )""",
        """CREATE TABLE upstream_oauth_links (
            upstream_oauth_link_id TEXT PRIMARY KEY,
            upstream_oauth_provider_id TEXT NOT NULL
                REFERENCES upstream_oauth_providers (upstream_oauth_provider_id) ON DELETE CASCADE,
            user_id TEXT REFERENCES users (user_id) ON DELETE CASCADE,
            subject TEXT NOT NULL,
            human_account_name TEXT,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
    ]),
    # Only in the 1.22.0 stand-in, as MAS 1.22.0 added indexes 1.21.0 does not have
    # (crates/storage-pg/migrations/20260716100001_upstream_oauth_links_human_account_name_trgm_idx.sql):
    # upgrading the stand-in from 1.21.0 to 1.22.0 really migrates its database.
    (4, "index on the upstream links' account names", [
        "CREATE INDEX upstream_oauth_links_human_account_name_idx ON upstream_oauth_links (human_account_name)",
    ], (1, 22, 0)),
    # The OAuth 2.0 authorization code grant with PKCE (tests/support/mas_standin/mas_standin/oauth.py): dynamically
    # registered clients beside the static ones, browser sessions, grants, user sessions and refresh tokens.
    (5, "authorization code grant: registered clients, browser sessions, grants and refresh tokens", [
        "ALTER TABLE oauth2_clients ADD COLUMN is_static BOOLEAN NOT NULL DEFAULT TRUE,"
        " ADD COLUMN metadata_digest TEXT UNIQUE, ADD COLUMN metadata TEXT",  # metadata: the registered JSON
        """CREATE TABLE browser_sessions (
            browser_session_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
            user_agent TEXT,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            finished_at TIMESTAMPTZ
        )""",
        """CREATE TABLE oauth2_authorization_grants (
            oauth2_authorization_grant_id TEXT PRIMARY KEY,
            client_id TEXT NOT NULL REFERENCES oauth2_clients (client_id) ON DELETE CASCADE,
            redirect_uri TEXT NOT NULL,
            scope TEXT NOT NULL,
            state TEXT,
            nonce TEXT,
            response_mode TEXT NOT NULL,
            code TEXT UNIQUE,
            code_challenge TEXT,
            code_challenge_method TEXT,
            login_hint TEXT,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            fulfilled_at TIMESTAMPTZ,
            browser_session_id TEXT REFERENCES browser_sessions (browser_session_id) ON DELETE CASCADE,
            exchanged_at TIMESTAMPTZ,
            oauth2_session_id TEXT,
            cancelled_at TIMESTAMPTZ
        )""",
        # A user's session holds its current access token (a refresh replaces it, as MAS revokes the old one).
        "ALTER TABLE oauth2_sessions ADD COLUMN user_id TEXT REFERENCES users (user_id) ON DELETE CASCADE,"
        " ADD COLUMN browser_session_id TEXT, ADD COLUMN access_token_created_at TIMESTAMPTZ",
        """CREATE TABLE oauth2_refresh_tokens (
            oauth2_refresh_token_id TEXT PRIMARY KEY,
            oauth2_session_id TEXT NOT NULL REFERENCES oauth2_sessions (oauth2_session_id) ON DELETE CASCADE,
            refresh_token TEXT NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            consumed_at TIMESTAMPTZ,
            next_refresh_token_id TEXT
        )""",
    ]),
    # syn2mas (syn2mas.py, MAS's crates/syn2mas): what it imports from Synapse. A password keeps its scheme
    # version (NULL: the stand-in's own hash, of the newest scheme); a compat session may have no device and
    # several access tokens (Synapse's), and refresh tokens; emails and other third-party IDs.
    (6, "syn2mas: password versions, guests, emails, compat access and refresh tokens", [
        "ALTER TABLE users ADD COLUMN password_version INTEGER, ADD COLUMN is_guest BOOLEAN NOT NULL DEFAULT FALSE",
        """CREATE TABLE user_emails (
            user_email_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
            email TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
        "CREATE INDEX user_emails_user_id_idx ON user_emails (user_id)",
        """CREATE TABLE user_unsupported_third_party_ids (
            user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
            medium TEXT NOT NULL,
            address TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (user_id, medium, address)
        )""",
        "ALTER TABLE compat_sessions ALTER COLUMN device_id DROP NOT NULL, ALTER COLUMN access_token DROP NOT NULL,"
        " ADD COLUMN last_active_at TIMESTAMPTZ, ADD COLUMN last_active_ip INET, ADD COLUMN user_agent TEXT",
        """CREATE TABLE compat_access_tokens (
            compat_access_token_id TEXT PRIMARY KEY,
            compat_session_id TEXT NOT NULL REFERENCES compat_sessions (compat_session_id) ON DELETE CASCADE,
            access_token TEXT NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            expires_at TIMESTAMPTZ,
            revoked_at TIMESTAMPTZ
        )""",
        """CREATE TABLE compat_refresh_tokens (
            compat_refresh_token_id TEXT PRIMARY KEY,
            compat_session_id TEXT NOT NULL REFERENCES compat_sessions (compat_session_id) ON DELETE CASCADE,
            compat_access_token_id TEXT NOT NULL
                REFERENCES compat_access_tokens (compat_access_token_id) ON DELETE CASCADE,
            refresh_token TEXT NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            consumed_at TIMESTAMPTZ
        )""",
    ]),
]  # fmt: skip


def _release() -> tuple[int, ...]:
    from . import version

    try:
        return tuple(int(part) for part in version().split(".")[:3])
    except ValueError:
        return (999,)  # run from the source tree: every migration


def available() -> list[tuple]:
    """The migrations this release has: those added in a later release are not (MIGRATIONS' 4th field)."""
    return [m[:3] for m in MIGRATIONS if len(m) < 4 or _release() >= m[3]]


class Unavailable(Exception):
    """The database could not be reached or refused us."""


def is_database_error(error: BaseException) -> bool:
    return type(error).__module__.startswith("pg8000")


def describe(error: BaseException) -> str:
    if is_database_error(error) and error.args and isinstance(error.args[0], dict):
        fields = error.args[0]
        return f"{fields.get('S', 'ERROR')}: {fields.get('M', error)} (SQLSTATE {fields.get('C', '?')})"
    return str(error) or type(error).__name__


def _ssl_context(mode: str | None, database: dict):
    if mode in (None, "disable", "allow", "prefer"):
        return None
    context = ssl.create_default_context()
    if database.get("ssl_ca_file"):
        context.load_verify_locations(database["ssl_ca_file"])
    if mode == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif mode == "verify-ca":
        context.check_hostname = False
    if database.get("ssl_certificate_file") and database.get("ssl_key_file"):
        context.load_cert_chain(database["ssl_certificate_file"], database["ssl_key_file"])
    return context


def _default_socket(port: int) -> str | None:
    for directory in ("/var/run/postgresql", "/private/tmp", "/tmp"):
        path = Path(directory) / f".s.PGSQL.{port}"
        if path.exists():
            return str(path)
    return None


def connect_args(database: dict) -> dict:
    """pg8000 keyword arguments for MAS's `database` section (no secret is ever logged from here)."""
    env = os.environ
    host, port, socket_dir = env.get("PGHOST"), int(env.get("PGPORT", "5432")), None
    user, password, name = env.get("PGUSER"), env.get("PGPASSWORD"), env.get("PGDATABASE")
    ssl_mode = database.get("ssl_mode")
    if database.get("uri") is not None:
        url = urllib.parse.urlsplit(database["uri"])
        query = dict(urllib.parse.parse_qsl(url.query))
        host = urllib.parse.unquote(url.hostname) if url.hostname else query.get("host", host)
        port = url.port or int(query.get("port", port))
        user = urllib.parse.unquote(url.username) if url.username else query.get("user", user)
        password = urllib.parse.unquote(url.password) if url.password else query.get("password", password)
        name = url.path.lstrip("/") or query.get("dbname", name)
        ssl_mode = query.get("sslmode", ssl_mode)
    else:
        host = database.get("host") or host
        port = database.get("port") or port
        socket_dir = database.get("socket")
        user = database.get("username") or user
        name = database.get("database") or name
        if database.get("password") is not None:
            password = database["password"]
        if database.get("password_file") is not None:
            password = read_file(database["password_file"], "database.password_file").decode().strip()
    args = {"user": user or getpass.getuser(), "password": password, "database": name, "port": port,
            "application_name": APPLICATION_NAME, "timeout": 15}  # fmt: skip
    if host and host.startswith("/"):
        socket_dir, host = host, None
    if socket_dir:
        args["unix_sock"] = str(Path(socket_dir) / f".s.PGSQL.{port}")
    elif host:
        args["host"] = host
    elif default := _default_socket(port):
        args["unix_sock"] = default
    else:
        args["host"] = "localhost"
    context = _ssl_context(ssl_mode, database)
    if context is not None:
        args["ssl_context"] = context
    return args


def connect(database: dict):
    """A pg8000 native connection (pg8000 is imported here: commands without a database start faster)."""
    import pg8000.native

    args = connect_args(database)
    try:
        return pg8000.native.Connection(**args)
    except Exception as error:
        if not (is_database_error(error) or isinstance(error, OSError)):
            raise
        where = args.get("unix_sock") or f"{args.get('host')}:{args['port']}"
        raise Unavailable(
            f"could not connect to the database at {where} as {args['user']!r}: {describe(error)}"
        ) from None


def migrate(conn) -> list[int]:
    """Apply pending migrations; return the versions applied."""
    conn.run("BEGIN")
    try:
        conn.run("SELECT pg_advisory_xact_lock(hashtext('mas-standin migrations'))")
        conn.run(
            "CREATE TABLE IF NOT EXISTS mas_standin_migrations (version INTEGER PRIMARY KEY,"
            " description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.run("SELECT version FROM mas_standin_migrations")}
        known = {m[0] for m in available()}
        for version in sorted(done - known):
            # crates/storage-pg/src/lib.rs `pending_migrations`: a warning, not an error.
            log.warn("mas_storage_pg", f"The database has a migration applied ({version}) that doesn't exist anymore! "
                     "This should not happen, unless rolling back to an older version of MAS.")  # fmt: skip
        applied = []
        for version, description, statements in available():
            if version in done:
                continue
            log.info("mas_storage_pg::migrations", "Applying migration", version=version, description=description)
            for statement in statements:
                conn.run(statement)
            conn.run("INSERT INTO mas_standin_migrations (version, description) VALUES (:v, :d)",
                     v=version, d=description)  # fmt: skip
            applied.append(version)
        conn.run("COMMIT")
    except BaseException:
        conn.run("ROLLBACK")
        raise
    return applied


def pending(conn) -> list[int]:
    exists = conn.run("SELECT to_regclass('mas_standin_migrations') IS NOT NULL")[0][0]
    done = {row[0] for row in conn.run("SELECT version FROM mas_standin_migrations")} if exists else set()
    return [version for version, _, _ in available() if version not in done]


class Pool:
    """A few reusable connections for the server's threads; a connection that failed is dropped."""

    def __init__(self, database: dict, size: int = 8):
        self.database = database
        self.idle: queue.LifoQueue = queue.LifoQueue(maxsize=size)
        self.lock = threading.Lock()

    @contextmanager
    def connection(self):
        conn = None
        while conn is None:
            try:
                conn = self.idle.get_nowait()
            except queue.Empty:
                conn = connect(self.database)
                break
            try:  # an idle connection may have died with a database restart
                conn.run("SELECT 1")
            except Exception:
                conn = None
        try:
            yield conn
        except BaseException:
            try:
                conn.close()
            except Exception:
                pass
            raise
        try:
            self.idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def close(self) -> None:
        while True:
            try:
                self.idle.get_nowait().close()
            except queue.Empty:
                return
            except Exception:
                continue


@contextmanager
def transaction(conn):
    conn.run("BEGIN")
    try:
        yield conn
    except BaseException:
        conn.run("ROLLBACK")
        raise
    conn.run("COMMIT")
