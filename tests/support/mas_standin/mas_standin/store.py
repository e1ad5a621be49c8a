"""What the stand-in keeps in PostgreSQL, and the jobs MAS's worker runs against Synapse.

MAS provisions users and syncs devices asynchronously, through jobs its worker runs (the `server`
runs the worker unless `--no-worker`): `manage register-user` only schedules the provisioning, and a
compat logout only schedules a device sync. Here a job is a flag on the user row
(`provision_pending`, `devices_dirty`); the worker picks flagged users up every second and keeps the
flag on failure, so a user registered while Synapse was away is provisioned once Synapse answers.
A user created through the admin API is provisioned right away instead (`provision`, the job's own
step), inside the transaction that creates it, as MAS's handler does.
"""

import threading
import time

from . import crypto, log
from .database import transaction
from .homeserver import HomeserverError, SynapseConnection


def rows(conn, sql: str, **params) -> list[dict]:
    result = conn.run(sql, **params)
    if not conn.columns:
        return []
    names = [c["name"] for c in conn.columns]
    return [dict(zip(names, row, strict=True)) for row in result or []]


def one(conn, sql: str, **params) -> dict | None:
    found = rows(conn, sql, **params)
    return found[0] if found else None


# ---------------------------------------------------------------- users


def find_user(conn, username: str) -> dict | None:
    """The user of that username; like MAS (`LOWER(username) = LOWER($1)`), case does not matter."""
    return one(conn, "SELECT * FROM users WHERE LOWER(username) = LOWER(:u) ORDER BY created_at", u=username)


def find_user_by_id(conn, user_id: str) -> dict | None:
    return one(conn, "SELECT * FROM users WHERE user_id = :i", i=user_id)


def create_user(conn, username: str, hashed_password: str | None, admin: bool | None, display_name: str | None) -> str:
    user_id = crypto.ulid()
    conn.run(
        "INSERT INTO users (user_id, username, hashed_password, can_request_admin, pending_display_name)"
        " VALUES (:i, :u, :p, :a, :d)",
        i=user_id, u=username, p=hashed_password, a=bool(admin), d=display_name,
    )  # fmt: skip
    return user_id


def set_password(conn, user_id: str, password: str) -> None:
    conn.run("UPDATE users SET hashed_password = :p, password_version = NULL WHERE user_id = :i",
             p=crypto.hash_password(password), i=user_id)  # fmt: skip


def upgrade_password(conn, user_id: str, version: int, hashed: str) -> None:
    """A password verified with an older scheme, re-hashed with the newest (MAS adds a user_passwords row)."""
    conn.run("UPDATE users SET hashed_password = :p, password_version = :v WHERE user_id = :i",
             p=hashed, v=version, i=user_id)  # fmt: skip


def set_admin(conn, user_id: str, admin: bool) -> None:
    """MAS's `can_request_admin` (the admin API's `admin`); sessions already started keep what they had."""
    conn.run("UPDATE users SET can_request_admin = :a WHERE user_id = :i", a=admin, i=user_id)


def provision(conn, homeserver: SynapseConnection, user: dict) -> bool:
    """Create or update the user on the homeserver and clear its provisioning job; True if it was created."""
    created = homeserver.provision_user(
        user["username"], user["user_id"], user.get("pending_display_name"), locked=user.get("locked_at") is not None
    )
    conn.run(
        "UPDATE users SET provision_pending = FALSE, pending_display_name = NULL, provisioned_at = now()"
        " WHERE user_id = :i",
        i=user["user_id"],
    )
    return created


def active_devices(conn, user_id: str) -> set[str]:
    """The devices of the user's active compat sessions and of its active OAuth 2.0 sessions' device scopes."""
    found = conn.run("SELECT device_id FROM compat_sessions WHERE user_id = :i AND finished_at IS NULL", i=user_id)
    devices = {row[0] for row in found if row[0] is not None}  # syn2mas's deviceless sessions have none
    scopes = conn.run("SELECT scope FROM oauth2_sessions WHERE user_id = :i AND finished_at IS NULL", i=user_id)
    prefixes = ("urn:matrix:client:device:", "urn:matrix:org.matrix.msc2967.client:device:")
    for (scope,) in scopes:
        devices |= {token.split(":device:", 1)[1] for token in scope.split(" ") if token.startswith(prefixes)}
    return devices


def start_compat_session(conn, user_id: str, device_id: str, human_name: str | None, admin: bool = False) -> dict:
    """A new compat session with its access token; active sessions on the same device are replaced."""
    with transaction(conn):
        conn.run("SELECT pg_advisory_xact_lock(hashtext(:i))", i=user_id)
        conn.run(
            "UPDATE compat_sessions SET finished_at = now() WHERE user_id = :i AND device_id = :d AND finished_at IS NULL",
            i=user_id, d=device_id,
        )  # fmt: skip
        session = {"compat_session_id": crypto.ulid(), "access_token": crypto.token("mct"), "device_id": device_id}
        conn.run(
            "INSERT INTO compat_sessions (compat_session_id, user_id, device_id, human_name, is_synapse_admin,"
            " access_token) VALUES (:s, :i, :d, :h, :a, :t)",
            s=session["compat_session_id"], i=user_id, d=device_id, h=human_name, a=admin, t=session["access_token"],
        )  # fmt: skip
    return session


def session_for_token(conn, token: str) -> dict | None:
    """The active compat session of a compat access token, with its user, if both are valid."""
    if crypto.token_type(token) != "compat_access_token":
        return None
    found = one(
        conn,
        "SELECT s.compat_session_id, s.device_id, s.is_synapse_admin, s.created_at, NULL::TIMESTAMPTZ AS expires_at,"
        " u.user_id, u.username"
        " FROM compat_sessions s JOIN users u USING (user_id)"
        " WHERE s.access_token = :t AND s.finished_at IS NULL AND u.locked_at IS NULL AND u.deactivated_at IS NULL",
        t=token,
    )
    if found is not None:
        return found
    # The compat access tokens of their own table: those syn2mas imported from Synapse (a session may have
    # several, or no device); valid while not revoked nor expired (CompatAccessToken::is_valid), with the
    # session and user valid too. `created_at` is the token's, as MAS gives it as `iat`.
    return one(
        conn,
        "SELECT s.compat_session_id, s.device_id, s.is_synapse_admin, t.created_at, t.expires_at,"
        " u.user_id, u.username"
        " FROM compat_access_tokens t JOIN compat_sessions s USING (compat_session_id) JOIN users u USING (user_id)"
        " WHERE t.access_token = :t AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())"
        " AND s.finished_at IS NULL AND u.locked_at IS NULL AND u.deactivated_at IS NULL",
        t=token,
    )


def refresh_compat_session(conn, refresh_token: str, ttl: int) -> tuple[str, str] | None:
    """compat/refresh.rs: (new access token, new refresh token), or None for a token that is unknown, consumed or
    of a finished session."""
    with transaction(conn):
        found = one(
            conn,
            "SELECT r.compat_refresh_token_id, r.compat_session_id, r.compat_access_token_id FROM compat_refresh_tokens r"
            " JOIN compat_sessions s USING (compat_session_id)"
            " WHERE r.refresh_token = :t AND r.consumed_at IS NULL AND s.finished_at IS NULL FOR UPDATE OF r",
            t=refresh_token,
        )
        if found is None:
            return None
        access, refresh, access_id = crypto.token("mct"), crypto.token("mcr"), crypto.ulid()
        conn.run(
            "INSERT INTO compat_access_tokens (compat_access_token_id, compat_session_id, access_token, expires_at)"
            " VALUES (:i, :s, :t, now() + make_interval(secs => :ttl))",
            i=access_id, s=found["compat_session_id"], t=access, ttl=ttl,
        )  # fmt: skip
        conn.run(
            "INSERT INTO compat_refresh_tokens (compat_refresh_token_id, compat_session_id, compat_access_token_id,"
            " refresh_token) VALUES (:i, :s, :a, :t)",
            i=crypto.ulid(), s=found["compat_session_id"], a=access_id, t=refresh,
        )  # fmt: skip
        conn.run("UPDATE compat_refresh_tokens SET consumed_at = now() WHERE compat_refresh_token_id = :i",
                 i=found["compat_refresh_token_id"])  # fmt: skip
        conn.run(
            "UPDATE compat_access_tokens SET expires_at = now() WHERE compat_access_token_id = :i"
            " AND (expires_at IS NULL OR expires_at > now())",
            i=found["compat_access_token_id"],
        )
    return access, refresh


def finish_sessions(conn, user_id: str, session_id: str | None = None) -> int:
    """End one session (or every active one of the user) and schedule a device sync."""
    with transaction(conn):
        where = "compat_session_id = :s" if session_id else "user_id = :i"
        ended = conn.run(
            f"UPDATE compat_sessions SET finished_at = now() WHERE {where} AND finished_at IS NULL RETURNING 1",
            **({"s": session_id} if session_id else {"i": user_id}),
        )
        conn.run("UPDATE users SET devices_dirty = TRUE WHERE user_id = :i", i=user_id)
    return len(ended)


# ---------------------------------------------------------------- OAuth 2.0 sessions (client_credentials)


def find_client(conn, client_id: str) -> dict | None:
    """A client by its ID, which MAS parses as a ULID (so case does not matter); None if it is not one."""
    try:
        canonical = crypto.parse_ulid(client_id)
    except ValueError:
        return None
    return one(conn, "SELECT * FROM oauth2_clients WHERE UPPER(client_id) = :c", c=canonical)


def start_oauth2_session(conn, client_id: str, scope: str, ttl: int) -> dict:
    """A new session of a client, without a user, and its access token valid for `ttl` seconds."""
    session = {"oauth2_session_id": crypto.ulid(), "access_token": crypto.token("mat")}
    conn.run(
        "INSERT INTO oauth2_sessions (oauth2_session_id, client_id, scope, access_token, expires_at)"
        " VALUES (:s, :c, :scope, :t, now() + make_interval(secs => :ttl))",
        s=session["oauth2_session_id"], c=client_id, scope=scope, t=session["access_token"], ttl=ttl,
    )  # fmt: skip
    return session


def oauth2_session_for_token(conn, token: str) -> dict | None:
    """The OAuth 2.0 session of an access token, with `expired` computed by the database's clock."""
    return one(conn, "SELECT *, expires_at <= now() AS expired FROM oauth2_sessions WHERE access_token = :t", t=token)


# ---------------------------------------------------------------- clients (config sync)


class _RollBack(Exception):
    pass


def config_sync(
    conn,
    providers: list[dict],
    clients: list[dict],
    key: bytes,
    prune: bool,
    dry_run: bool,
    client_secret_of,
    provider_secret_of,
) -> None:
    """`config sync` (crates/cli/src/sync.rs `config_sync`), with MAS's log lines, in one transaction.

    Providers: those enabled in the config are added, updated or re-enabled; a provider enabled in
    the database but not in the config (or disabled there) is disabled, its users' links kept; with
    `prune`, every disabled provider is deleted, with its links. Clients: upserted; with `prune`,
    static clients missing from the config are deleted. `--dry-run` logs the same decisions, reads
    no secret file and rolls back.
    """  # fmt: skip
    import json

    target = "mas_cli::sync"
    try:
        with transaction(conn):
            log.info(target, "Acquiring configuration lock")
            conn.run("SELECT pg_advisory_xact_lock(hashtext('MAS config sync'))")
            log.info(target, "Syncing providers and clients defined in config to database", prune=prune,
                     dry_run=dry_run)  # fmt: skip

            config_ids = {p["id"] for p in providers if p.get("enabled", True)}
            existing_enabled, existing_disabled = set(), []
            for provider_id, disabled_at in conn.run(
                "SELECT upstream_oauth_provider_id, disabled_at FROM upstream_oauth_providers ORDER BY 1"
            ):
                if disabled_at is None:
                    if provider_id in config_ids:
                        existing_enabled.add(provider_id)
                    else:
                        log.info(target, "Disabling provider", provider__id=provider_id)
                        if not dry_run:
                            conn.run("UPDATE upstream_oauth_providers SET disabled_at = now()"
                                     " WHERE upstream_oauth_provider_id = :p", p=provider_id)  # fmt: skip
                        existing_disabled.append(provider_id)
                else:
                    existing_disabled.append(provider_id)
            if prune:
                for provider_id in existing_disabled:
                    log.info(target, "Deleting provider", provider__id=provider_id)
                    if not dry_run:
                        conn.run("DELETE FROM upstream_oauth_providers WHERE upstream_oauth_provider_id = :p",
                                 p=provider_id)  # fmt: skip
            elif len(existing_disabled) == 1:
                log.warn(target, "A provider is soft-deleted in the database. Run `mas-cli config sync --prune` to"
                                 " delete it.")  # fmt: skip
            elif existing_disabled:
                log.warn(target, f"{len(existing_disabled)} providers are soft-deleted in the database. Run `mas-cli"
                                 " config sync --prune` to delete them.")  # fmt: skip
            for index, provider in enumerate(providers):
                if not provider.get("enabled", True):
                    continue
                provider_id = provider["id"]
                if provider_id in existing_enabled:
                    log.info(target, "Updating provider", provider__id=provider_id)
                elif provider_id in existing_disabled:
                    log.info(target, "Enabling and updating provider", provider__id=provider_id)
                else:
                    log.info(target, "Adding provider", provider__id=provider_id)
                if dry_run:
                    continue
                secret = provider_secret_of(provider)
                conn.run(
                    "INSERT INTO upstream_oauth_providers (upstream_oauth_provider_id, issuer, human_name, brand_name,"
                    " scope, client_id, encrypted_client_secret, token_endpoint_auth_method, claims_imports, ui_order)"
                    " VALUES (:p, :i, :h, :b, :s, :c, :e, :m, :ci, :o) ON CONFLICT (upstream_oauth_provider_id) DO"
                    " UPDATE SET issuer = :i, human_name = :h, brand_name = :b, scope = :s, client_id = :c,"
                    " encrypted_client_secret = :e, token_endpoint_auth_method = :m, claims_imports = :ci,"
                    " ui_order = :o, disabled_at = NULL",
                    p=provider_id, i=provider.get("issuer"), h=provider.get("human_name"),
                    b=provider.get("brand_name"), s=provider.get("scope", "openid"), c=provider["client_id"],
                    e=crypto.encrypt(key, secret) if secret is not None else None,
                    m=provider.get("token_endpoint_auth_method", "client_secret_basic"),
                    ci=json.dumps(provider.get("claims_imports") or {}, sort_keys=True), o=index,
                )  # fmt: skip

            # Only static clients: dynamically registered ones (oauth.py) are not the config's to prune.
            existing = {row[0] for row in conn.run("SELECT client_id FROM oauth2_clients WHERE is_static")}
            stale = sorted(existing - {c["client_id"] for c in clients})
            if prune:
                for client_id in stale:
                    log.info(target, "Deleting client", client__id=client_id)
                    if not dry_run:
                        conn.run("DELETE FROM oauth2_clients WHERE client_id = :c", c=client_id)
            elif len(stale) == 1:
                log.warn(
                    target, "A static client in the database is not in the config. Run with `--prune` to delete it."
                )
            elif stale:
                log.warn(target, f"{len(stale)} static clients in the database are not in the config. Run with"
                                 " `--prune` to delete them.")  # fmt: skip
            for client in clients:
                client_id = client["client_id"]
                log.info(target, "Updating client" if client_id in existing else "Adding client", client__id=client_id)
                if dry_run:
                    continue
                secret = client_secret_of(client)
                conn.run(
                    "INSERT INTO oauth2_clients (client_id, client_auth_method, encrypted_client_secret, client_name)"
                    " VALUES (:c, :m, :s, :n) ON CONFLICT (client_id) DO UPDATE SET client_auth_method = :m,"
                    " encrypted_client_secret = :s, client_name = :n, updated_at = now()",
                    c=client_id, m=client["client_auth_method"], n=client.get("client_name"),
                    s=crypto.encrypt(key, secret) if secret is not None else None,
                )  # fmt: skip
            if dry_run:
                log.info(target, "Dry run, rolling back changes")
                raise _RollBack()
    except _RollBack:
        pass


def enabled_providers(conn) -> list[dict]:
    """The providers shown on the login page, in the config's order (ui_order)."""
    return rows(conn, "SELECT upstream_oauth_provider_id AS id, human_name, brand_name FROM upstream_oauth_providers"
                      " WHERE disabled_at IS NULL ORDER BY ui_order, upstream_oauth_provider_id")  # fmt: skip


# ---------------------------------------------------------------- worker jobs


class Worker:
    """MAS's task worker, for the two jobs the stand-in has: provision users, sync their devices."""

    TARGET = "mas_tasks"

    def __init__(self, pool, homeserver: SynapseConnection):
        self.pool, self.homeserver = pool, homeserver
        # One user at a time: a login creating a device must not race a sync deleting it.
        self.user_lock = threading.Lock()
        self.wake = threading.Event()
        self.retry: dict[str, tuple[int, float]] = {}  # user_id -> (failures, not before), like a job's backoff

    def provision(self, conn, user: dict) -> None:
        created = provision(conn, self.homeserver, user)
        log.info(self.TARGET, "User provisioned" if created else "User updated on the homeserver",
                 user__id=user["user_id"], user__username=user["username"])  # fmt: skip

    def sync_devices(self, conn, user: dict) -> None:
        conn.run("UPDATE users SET devices_dirty = FALSE WHERE user_id = :i", i=user["user_id"])
        try:
            self.homeserver.sync_devices(user["username"], active_devices(conn, user["user_id"]))
        except BaseException:
            conn.run("UPDATE users SET devices_dirty = TRUE WHERE user_id = :i", i=user["user_id"])
            raise
        log.info(self.TARGET, "Devices synced with the homeserver", user__id=user["user_id"])

    def run_once(self) -> None:
        with self.pool.connection() as conn:
            for user in rows(conn, "SELECT * FROM users WHERE provision_pending OR devices_dirty ORDER BY created_at"):
                failures, not_before = self.retry.get(user["user_id"], (0, 0.0))
                if time.monotonic() < not_before:
                    continue
                with self.user_lock:
                    try:
                        if user["provision_pending"]:
                            self.provision(conn, user)
                        if user["devices_dirty"]:
                            self.sync_devices(conn, user)
                    except HomeserverError as error:
                        delay = min(2**failures, 10)
                        self.retry[user["user_id"]] = (failures + 1, time.monotonic() + delay)
                        log.error(self.TARGET, f"Job failed, will retry in {delay}s: {error}", user__id=user["user_id"])
                    else:
                        self.retry.pop(user["user_id"], None)

    def run(self, stop: threading.Event) -> None:
        log.info("mas_cli::server", "Starting task worker")
        while not stop.is_set():
            try:
                self.run_once()
            except Exception as error:  # the database may be away for a moment: retried next round
                log.error(self.TARGET, f"Worker round failed, will retry: {error}")
            self.wake.wait(1.0)
            self.wake.clear()
