"""`mas-cli syn2mas check|migrate [--dry-run]`: MAS 1.22.0's crates/syn2mas and crates/cli/src/commands/syn2mas.rs.

    mas-cli syn2mas [-c MAS.yaml]... --synapse-config SYNAPSE.yaml [--synapse-config ...]
                    [--synapse-database-uri postgresql://...] [--ignore-missing-auth-providers] check
    mas-cli syn2mas ... migrate [--dry-run]

In the real one's order: the Synapse config files (merged as figment merges: mappings recursively, anything else
replaced by the later file; a missing file is an empty one), the Synapse database (its config's `database`
section, driver psycopg2 only, unless --synapse-database-uri), the MAS database, migrated; for `migrate` a config
sync (no prune) so the upstream providers are in the database; the session advisory lock of the MAS database
(sqlx's PgAdvisoryLock("syn2mas-maswriter")), else "Failed to acquire syn2mas lock on the database." and exit 1;
the config checks; the MAS database check (empty, unless a syn2mas is in progress); the Synapse database checks;
then errors (exit 10) and warnings on stderr. `check` exits 11 with warnings only, else prints "Check completed
successfully with no errors or warnings." and exits 0.

`migrate` reads Synapse in one SERIALIZABLE READ ONLY DEFERRABLE transaction that locks users, user_threepids,
user_external_ids, devices, access_tokens and refresh_tokens (EXCLUSIVE, or ACCESS SHARE for --dry-run; NOWAIT).
On the MAS side, one committed transaction renames the tables it writes to `syn2mas__*`, creates
syn2mas_restore_constraints/syn2mas_restore_indices and drops (saving them there) the constraints and indexes of
those tables and the foreign keys pointing at them; the rows are written in another transaction; at the end the
indexes and constraints are restored, the tables renamed back, the restore tables dropped (and with --dry-run
every migrated table truncated, CASCADE), committed, and the lock released. A migrate that was killed leaves the
renamed tables and the restore tables: the next run (check or migrate) sees "syn2mas in progress" (both restore
tables; one without the other is "inconsistent database: some, but not all, syn2mas resumption tables were
found"), skips the emptiness check, and migrate logs "Partial syn2mas migration has already been done;
resetting.", truncates the `syn2mas__*` tables and starts again with the saved constraints and indexes.

What is written (migration.rs), in the stand-in's schema (database.py migration 6):
- users: one per Synapse user but appservice users (skipped; an appservice user whose localpart has a `:` is
  ignored with a warning); ULIDs from `creation_ts`; `can_request_admin` = admin; `locked_at` and `deactivated_at`
  = creation_ts when locked / deactivated; `is_guest`; the bcrypt `password_hash` as password scheme version 1.
  The stand-in marks them provisioned (Synapse has them) and never syncs their devices at once.
- user_threepids: `email` ones to user_emails, others to user_unsupported_third_party_ids.
- user_external_ids: links to the upstream provider whose config has `synapse_idp_id` equal to `auth_provider`
  (none: an error, or skipped with --ignore-missing-auth-providers).
- access tokens (not puppets, without refresh token, of an existing device or of none), then the refreshable
  pairs (whose next token was not used): compat access tokens, and compat refresh tokens, in sessions per
  (user, device); a token without a device gets its own deviceless session. Tokens of deactivated users, guests
  and appservices are skipped. `expires_at` from `valid_until_ms`, `created_at` from `last_validated` (or now).
- devices (not hidden, not `guest_device`): the compat sessions, with display name, last seen time, IP (unless
  `-` or unparsable), user agent and `is_synapse_admin` = the user's admin flag.

Differences: one writer transaction instead of MAS's eight parallel ones; no user_passwords table (the hash and
its version are columns of users); no progress logger. Passwords and tokens are never printed.
"""

import datetime
import hashlib
import hmac
import ipaddress
import secrets
import sys
import time
from pathlib import Path

import yaml

from . import config as cfg
from . import crypto, log, store
from .database import connect, connect_args, describe, is_database_error, migrate

TARGET = "syn2mas"
EXIT_CODE_CHECK_ERRORS = 10
EXIT_CODE_CHECK_WARNINGS = 11
MIGRATED_PASSWORD_VERSION = 1
# The stand-in's tables that stand for MAS's MAS_TABLES_AFFECTED_BY_MIGRATION (it has no user_passwords).
MAS_TABLES_AFFECTED_BY_MIGRATION = ("users", "user_emails", "user_unsupported_third_party_ids",
                                    "upstream_oauth_links", "compat_sessions", "compat_access_tokens",
                                    "compat_refresh_tokens")  # fmt: skip
RESTORE_TABLES = ("syn2mas_restore_constraints", "syn2mas_restore_indices")
SYNAPSE_TABLES_TO_LOCK = ("users", "user_threepids", "user_external_ids", "devices", "access_tokens",
                          "refresh_tokens")  # fmt: skip


class Fatal(Exception):
    """The command fails with `Error: <message>` (anyhow's error with its context), exit 1."""


def advisory_lock_key(name: str) -> int:
    """sqlx's PgAdvisoryLock::new: HKDF-SHA256 (no salt, sqlx's info string) to 8 bytes, little-endian i64."""
    prk = hmac.new(b"\0" * 32, name.encode(), hashlib.sha256).digest()
    okm = hmac.new(prk, b"SQLx (Rust) Postgres advisory lock\x01", hashlib.sha256).digest()[:8]
    return int.from_bytes(okm, "little", signed=True)


LOCK_KEY = advisory_lock_key("syn2mas-maswriter")


def rust_debug(text: str) -> str:
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
    return '"' + "".join(escapes.get(c) or (f"\\u{{{ord(c):x}}}" if not c.isprintable() else c) for c in text) + '"'


# ---------------------------------------------------------------- the Synapse config (synapse_reader/config)


def merge(base, extra):
    """figment's `merge`: mappings merged recursively, any other value (lists too) replaced by the later one."""
    if isinstance(base, dict) and isinstance(extra, dict):
        merged = dict(base)
        for key, value in extra.items():
            merged[key] = merge(merged[key], value) if key in merged else value
        return merged
    return extra


def _bool(config: dict, path: str, default: bool) -> bool:
    node = config
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return default
    value = node.get(keys[-1]) if isinstance(node, dict) else None
    if value is None:
        return default
    if not isinstance(value, bool):
        raise Fatal(f"Failed to load Synapse configuration: invalid type: found {type(value).__name__} "
                    f"{value!r}, expected a boolean for key \"{path}\"")  # fmt: skip
    return value


def load_synapse_config(paths: list[str]) -> dict:
    """Config::load, to a normalised dict of what syn2mas reads."""
    merged: dict = {}
    for path in paths:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            continue  # figment: a missing file is an empty provider
        except (OSError, yaml.YAMLError) as error:
            raise Fatal(f"Failed to load Synapse configuration: {path}: {error}") from None
        if loaded is None:
            continue
        if not isinstance(loaded, dict):
            raise Fatal(f"Failed to load Synapse configuration: {path}: expected a mapping")
        merged = merge(merged, loaded)
    for field in ("database", "server_name"):
        if merged.get(field) is None:
            raise Fatal(f"Failed to load Synapse configuration: missing field `{field}`")
    database = merged["database"]
    if not isinstance(database, dict) or database.get("name") is None:
        raise Fatal('Failed to load Synapse configuration: missing field `name` for key "database"')
    password_config = merged.get("password_config") or {}
    user_consent = merged.get("user_consent")
    return {
        "server_name": str(merged["server_name"]),
        "database": {"name": database["name"], "args": database.get("args") or {}},
        "password_config": {
            "enabled": _bool(merged, "password_config.enabled", True),
            "localdb_enabled": _bool(merged, "password_config.localdb_enabled", True),
            "pepper": password_config.get("pepper"),
        },
        "allow_guest_access": _bool(merged, "allow_guest_access", False),
        "enable_registration": _bool(merged, "enable_registration", False),
        "enable_registration_captcha": _bool(merged, "enable_registration_captcha", False),
        "enable_3pid_changes": merged.get("enable_3pid_changes"),
        "user_consent": user_consent,
        "login_via_existing_session": _bool(merged, "login_via_existing_session.enabled", False),
        "cas_config": _bool(merged, "cas_config.enabled", False),
        "saml2_config": _bool(merged, "saml2_config.enabled", False),
        "jwt_config": _bool(merged, "jwt_config.enabled", False),
        "oidc_config": merged.get("oidc_config"),
        "oidc_providers": merged.get("oidc_providers") or [],
    }


def all_oidc_providers(synapse: dict) -> dict[str, dict]:
    """Config::all_oidc_providers: by Synapse's idp_id (`oidc`, or `oidc-<idp_id>` for oidc_providers)."""
    out = {}
    single = synapse.get("oidc_config")
    if single and single.get("issuer") is not None and single.get("client_id") is not None:
        out[single.get("idp_id") or "oidc"] = single
    for provider in synapse.get("oidc_providers") or []:
        idp_id = provider.get("idp_id")
        idp_id = "oidc" if idp_id is None or idp_id == "oidc" else f"oidc-{idp_id}"
        out[idp_id] = provider
    return out


def synapse_connect_args(synapse: dict, uri: str | None) -> dict:
    """DatabaseSection::to_sqlx_postgres (or the --synapse-database-uri), as pg8000 arguments."""
    if uri is not None:
        args = connect_args({"uri": uri})
    else:
        database = synapse["database"]
        if database["name"] != "psycopg2":
            raise Fatal("Synapse database configuration is invalid, cannot migrate.: syn2mas does not support the "
                        f"{database['name']} database driver")  # fmt: skip
        a = database["args"]
        if a.get("database") is not None and a.get("dbname") is not None:
            raise Fatal("Synapse database configuration is invalid, cannot migrate.: Only one of `database` and "
                        "`dbname` may be specified in the Synapse database configuration, not both.")  # fmt: skip
        section = {"host": a.get("host"), "port": a.get("port"), "username": a.get("user"),
                   "database": a.get("dbname") or a.get("database")}  # fmt: skip
        if a.get("password") is not None:
            section["password"] = str(a["password"])
        args = connect_args({k: v for k, v in section.items() if v is not None})
    args["application_name"] = "syn2mas-synapse"
    return args


# ---------------------------------------------------------------- checks (synapse_reader/checks.rs)

MSG = {
    "MissingPasswordScheme": "MAS config is missing a password hashing scheme with version '1'",
    "PasswordSchemeNotBcrypt": "Password scheme version '1' in the MAS config must use the Bcrypt algorithm, so "
    "that Synapse passwords can be imported and will be compatible.",
    "PasswordSchemeWrongPepper": "Password scheme version '1' in the MAS config must have the same secret as the "
    "`pepper` value from Synapse, so that Synapse passwords can be imported and will be compatible.",
    "GuestsEnabled": "Guest support is enabled in the Synapse configuration. Guests aren't supported by MAS, but if "
    "you don't have any then you could disable the option. See "
    "https://github.com/element-hq/matrix-authentication-service/issues/1445",
    "ThreepidChangesEnabled": "Synapse config has `enable_3pid_changes` explicitly enabled, which must be disabled "
    "or removed.",
    "LoginViaExistingSessionEnabled": "Synapse config has `login_via_existing_session.enabled` set to true, which "
    "must be disabled.",
    "DisableRegistrationAfterMigration": "Synapse config has registration enabled. This must be disabled after "
    "migration before bringing Synapse back online.",
    "DisableUserConsentAfterMigration": "Synapse config has `user_consent` enabled. This should be disabled after "
    "migration.",
    "ShouldPortUserConsentAsTerms": "Synapse config has `user_consent` enabled but MAS has not been configured with "
    "terms of service. You may wish to set up a `tos_uri` in your MAS branding configuration to replace the user "
    "consent.",
    "ShouldPortRegistrationCaptcha": "Synapse config has a registration CAPTCHA enabled, but no CAPTCHA has been "
    "configured in MAS. You may wish to manually configure this.",
}


def external_auth_system(name: str) -> str:
    return (f"Synapse config contains {name} auth configuration which will need to be manually mapped as an "
            "upstream OAuth 2.0 provider during migration.")  # fmt: skip


def synapse_config_check(synapse: dict) -> tuple[list[str], list[str]]:
    """(warnings, errors) of the Synapse config alone."""
    warnings, errors = [], []
    if synapse["enable_registration"]:
        warnings.append(MSG["DisableRegistrationAfterMigration"])
    if synapse["user_consent"] is not None:
        warnings.append(MSG["DisableUserConsentAfterMigration"])
    if synapse["cas_config"]:
        warnings.append(external_auth_system("CAS"))
    if synapse["saml2_config"]:
        warnings.append(external_auth_system("SAML2"))
    if synapse["jwt_config"]:
        warnings.append(external_auth_system("JWT"))
    if synapse["password_config"]["enabled"] and not synapse["password_config"]["localdb_enabled"]:
        warnings.append(external_auth_system("non-standard password provider plugin"))
    if synapse["enable_3pid_changes"] is True:
        errors.append(MSG["ThreepidChangesEnabled"])
    if synapse["login_via_existing_session"]:
        errors.append(MSG["LoginViaExistingSessionEnabled"])
    return warnings, errors


def synapse_config_check_against_mas_config(synapse: dict, mas: dict) -> tuple[list[str], list[str]]:
    """(warnings, errors) of the Synapse config against MAS's; Fatal if MAS's password schemes do not load."""
    from . import passwords

    warnings, errors = [], []
    try:
        schemes = passwords.load(mas.get("passwords"))
    except (passwords.SchemeError, cfg.Invalid) as error:
        detail = "; ".join(error.problems) if isinstance(error, cfg.Invalid) else str(error)
        raise Fatal(f"failed to load MAS password config: {detail}") from None
    scheme = next((s for s in schemes if s["version"] == MIGRATED_PASSWORD_VERSION), None)
    if scheme is None:
        errors.append(MSG["MissingPasswordScheme"])
    else:
        if scheme["algorithm"] != "bcrypt":
            errors.append(MSG["PasswordSchemeNotBcrypt"])
        pepper = synapse["password_config"]["pepper"]
        if scheme["secret"] != (None if pepper is None else str(pepper).encode()):
            errors.append(MSG["PasswordSchemeWrongPepper"])
    if synapse["allow_guest_access"]:
        errors.append(MSG["GuestsEnabled"])
    homeserver = str((mas.get("matrix") or {}).get("homeserver", cfg.DEFAULT_MATRIX["homeserver"]))
    if synapse["server_name"] != homeserver:
        errors.append(f"MAS configuration has the wrong `matrix.homeserver` set ({rust_debug(homeserver)}), it "
                      f"should match Synapse's `server_name` ({rust_debug(synapse['server_name'])})")  # fmt: skip
    if synapse["enable_registration_captcha"] and (mas.get("captcha") or {}).get("service") is None:
        warnings.append(MSG["ShouldPortRegistrationCaptcha"])
    if synapse["user_consent"] is not None and (mas.get("branding") or {}).get("tos_uri") is None:
        warnings.append(MSG["ShouldPortUserConsentAsTerms"])
    return warnings, errors


def _missing_provider(provider: str, num_users: int) -> str:
    return (f"Synapse database contains {num_users} users associated to the OpenID Connect or OAuth2 provider "
            f"'{provider}' but the Synapse configuration does not contain this provider.")  # fmt: skip


def provider_checks(counts: list[tuple[str, int]], synapse: dict, mas: dict, ignore_missing: bool):
    """The user_external_ids part of synapse_database_check, on (auth_provider, users) counts in order."""
    warnings, errors = [], []
    if not counts:
        return warnings, errors
    synapse_providers = all_oidc_providers(synapse)
    mas_providers = ((mas.get("upstream_oauth2") or {}).get("providers")) or []
    for provider, num_users in counts:
        if provider == "oauth-delegated":
            errors.append(f"Synapse database has {num_users} mapping entries from a previously-configured MAS "
                          "instance. If this is from a previous migration attempt, run the following SQL query "
                          "against the Synapse database: `DELETE FROM user_external_ids WHERE auth_provider = "
                          "'oauth-delegated';` and then run the migration again.")  # fmt: skip
            continue
        matching = synapse_providers.get(provider)
        if matching is None:
            (warnings if ignore_missing else errors).append(_missing_provider(provider, num_users))
            continue
        if not any(p.get("synapse_idp_id") == provider for p in mas_providers):
            issuer = matching.get("issuer")
            issuer = "<unspecified>" if issuer is None else str(issuer)
            errors.append(f"Synapse config contains an OpenID Connect or OAuth2 provider '{provider}' (issuer: "
                          f"{rust_debug(issuer)}) used by {num_users} users which must also be configured in the MAS "
                          "configuration as an upstream provider.")  # fmt: skip
    return warnings, errors


def synapse_database_check(conn, synapse: dict, mas: dict, ignore_missing: bool) -> tuple[list[str], list[str]]:
    warnings, errors = [], []
    num_guests = conn.run("SELECT COUNT(1) FROM users WHERE is_guest <> 0")[0][0]
    if num_guests > 0:
        warnings.append(f"Synapse database contains {num_guests} guests which will be migrated are not supported by "
                        "MAS. See https://github.com/element-hq/matrix-authentication-service/issues/1445")  # fmt: skip
    non_email = conn.run("SELECT COUNT(1) FROM user_threepids WHERE medium <> 'email'")[0][0]
    if non_email > 0:
        warnings.append(f"Synapse database contains {non_email} non-email 3PIDs (probably phone numbers), which will "
                        "be migrated but are not supported by MAS.")  # fmt: skip
    counts = conn.run("SELECT auth_provider, COUNT(*) AS num_users FROM user_external_ids GROUP BY auth_provider"
                      " ORDER BY auth_provider")  # fmt: skip
    more_warnings, more_errors = provider_checks([(p, n) for p, n in counts], synapse, mas, ignore_missing)
    return warnings + more_warnings, errors + more_errors


def report(warnings: list[str], errors: list[str]) -> str:
    """What syn2mas.rs prints on stderr before it stops or goes on."""
    text = ""
    if errors:
        text += "\n\n===== Errors =====\nThese issues prevent migrating from Synapse to MAS right now:\n\n"
        text += "".join(f"• {error}\n\n" for error in errors)
    if warnings:
        text += ("\n\n===== Warnings =====\nThese potential issues should be considered before migrating from "
                 "Synapse to MAS right now:\n\n")  # fmt: skip
        text += "".join(f"• {warning}\n\n" for warning in warnings)
    return text


def check_exit_status(warnings: list[str], errors: list[str]) -> int | None:
    """10 with errors (check and migrate); for check 11 with warnings only, else 0; None: migrate goes on."""
    if errors:
        return EXIT_CODE_CHECK_ERRORS
    return EXIT_CODE_CHECK_WARNINGS if warnings else 0


# ---------------------------------------------------------------- the MAS database (mas_writer)


def is_syn2mas_in_progress(conn) -> bool:
    found = conn.run("SELECT 1 FROM pg_tables WHERE schemaname = current_schema AND tablename = ANY(:t)",
                     t=list(RESTORE_TABLES))  # fmt: skip
    if not found:
        return False
    if len(found) == len(RESTORE_TABLES):
        return True
    raise Fatal("Unable to check if syn2mas is already in progress: inconsistent database: some, but not all, "
                "syn2mas resumption tables were found")  # fmt: skip


def mas_pre_migration_checks(conn) -> None:
    if is_syn2mas_in_progress(conn):
        return
    for table in MAS_TABLES_AFFECTED_BY_MIGRATION:
        try:
            present = conn.run(f"SELECT 1 AS dummy FROM {table} LIMIT 1")
        except Exception as error:
            if not is_database_error(error):
                raise
            raise Fatal(f"Query against {table} failed — is this actually a MAS database?: {describe(error)}") from None
        if present:
            raise Fatal(f"The MAS database is not empty: rows found in at least `{table}`. Please drop and recreate "
                        "the database, then try again.")  # fmt: skip


def _temporary_tables(conn) -> None:
    """syn2mas_temporary_tables.sql"""
    for name in RESTORE_TABLES:
        conn.run(f"CREATE TABLE {name} (order_key SERIAL NOT NULL PRIMARY KEY, table_name TEXT NOT NULL,"
                 " name TEXT NOT NULL, definition TEXT NOT NULL)")  # fmt: skip
    for table in MAS_TABLES_AFFECTED_BY_MIGRATION:
        conn.run(f"ALTER TABLE {table} RENAME TO syn2mas__{table}")


def _revert_temporary_tables(conn) -> None:
    """syn2mas_revert_temporary_tables.sql"""
    for name in RESTORE_TABLES:
        conn.run(f"DROP TABLE {name}")
    for table in MAS_TABLES_AFFECTED_BY_MIGRATION:
        conn.run(f"ALTER TABLE syn2mas__{table} RENAME TO {table}")


_CONSTRAINTS = ("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
                " JOIN pg_namespace n ON n.oid = c.connamespace WHERE {where} AND n.nspname = current_schema")  # fmt: skip


def _pause_indices(conn) -> tuple[list[tuple], list[tuple]]:
    """constraint_pausing.rs: per table, the foreign keys to it, its own constraints, then its indexes."""
    indices, constraints = [], []
    for unprefixed in MAS_TABLES_AFFECTED_BY_MIGRATION:
        table = f"syn2mas__{unprefixed}"
        for where in ("contype = 'f' AND confrelid::regclass::text = :t",
                      "contype IN ('f', 'p', 'u') AND conrelid::regclass::text = :t"):  # fmt: skip
            for table_name, name, definition in conn.run(_CONSTRAINTS.format(where=where), t=table):
                conn.run(f"ALTER TABLE {table_name} DROP CONSTRAINT {name}")
                constraints.append((table_name, name, definition))
        for name, definition, schema in conn.run(
            "SELECT indexname, indexdef, schemaname FROM pg_indexes WHERE schemaname = current_schema"
            " AND tablename = :t AND indexname IS NOT NULL AND indexdef IS NOT NULL", t=table,
        ):  # fmt: skip
            conn.run(f"DROP INDEX {name}")
            indices.append((schema, name, definition))
    return indices, constraints


def _restore_indices(conn, indices: list[tuple], constraints: list[tuple]) -> None:
    for _, name, definition in reversed(indices):
        log.info(TARGET, f"rebuilding index {name}")
        conn.run(definition)
    for table_name, name, definition in reversed(constraints):
        log.info(TARGET, f"rebuilding constraint {name}")
        conn.run(f"ALTER TABLE {table_name} ADD CONSTRAINT {name} {definition}")


def _ulid_at(when: datetime.datetime) -> str:
    """Ulid::from_datetime_with_rng: the time's milliseconds and 80 random bits, as the stand-in writes ULIDs."""
    value = (int(when.timestamp() * 1000) << 80) | secrets.randbits(80)
    return "".join(crypto.CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def _ulid_time(ulid: str) -> datetime.datetime:
    value = 0
    for char in ulid:
        value = (value << 5) | crypto.CROCKFORD.index(char)
    return datetime.datetime.fromtimestamp((value >> 80) / 1000, datetime.UTC)


def _seconds(value: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(value, datetime.UTC)


def _millis(value: int | None) -> datetime.datetime | None:
    return None if value is None else datetime.datetime.fromtimestamp(value / 1000, datetime.UTC)


def extract_localpart(user_id: str, server_name: str) -> str:
    """FullUserId::extract_localpart; Fatal as migration.rs's ExtractLocalpart error."""
    if not user_id.startswith("@"):
        problem = "user ID does not start with `@` sigil"
    elif ":" not in user_id:
        problem = "user ID does not have a `:` separator"
    else:
        localpart, found = user_id[1:].split(":", 1)
        if found == server_name:
            return localpart
        problem = f"wrong server name: expected {rust_debug(server_name)}, got {rust_debug(found)}"
    raise Fatal(f"failed to extract localpart of FullUserId({rust_debug(user_id)}): {problem}")


class Migration:
    """migration.rs `migrate` with MasWriter and SynapseReader, rows written as they are read."""

    def __init__(self, syn, mas_main, writer, server_name: str, providers: dict[str, str], ignore_missing: bool):
        self.syn, self.main, self.w = syn, mas_main, writer
        self.server_name, self.providers, self.ignore_missing = server_name, providers, ignore_missing
        self.users: dict[str, dict] = {}  # localpart -> {id (None: appservice), admin, deactivated, guest, appservice}
        self.sessions: dict[tuple[str, str], str] = {}  # (MAS user, device) -> compat session
        self.now = datetime.datetime.now(datetime.UTC)

    def _user(self, synapse_user_id: str, table: str) -> dict:
        localpart = extract_localpart(synapse_user_id, self.server_name)
        info = self.users.get(localpart)
        if info is None:
            raise Fatal(f"user {synapse_user_id} was not found for migration but a row in {table} was found for them")
        return info

    def _done(self, what: str, migrated: int, skipped: int, start: float) -> None:
        log.info(
            "syn2mas::migration", f"{migrated} {what} migrated ({skipped} skipped) in {time.monotonic() - start:.1f}s"
        )

    def users_(self) -> None:
        start, migrated, skipped = time.monotonic(), 0, 0
        rows = self.syn.run("SELECT name, password_hash, admin, deactivated, locked, creation_ts, is_guest,"
                            " appservice_id FROM users")  # fmt: skip
        for name, password_hash, admin, deactivated, locked, creation_ts, is_guest, appservice_id in rows:
            suffix = f":{self.server_name}"
            if appservice_id is not None and name.endswith(suffix) and ":" in name[: -len(suffix)]:
                log.warn("syn2mas::migration", f"AS user {name} has invalid localpart, ignoring!")
                continue
            localpart = extract_localpart(name, self.server_name)
            created = _seconds(creation_ts)
            user_id = _ulid_at(created)
            flags = {"admin": bool(admin), "deactivated": bool(deactivated), "guest": bool(is_guest),
                     "appservice": appservice_id is not None}  # fmt: skip
            if appservice_id is not None:
                skipped += 1
                self.users[localpart] = {"id": None, **flags}
                continue
            self.users[localpart] = {"id": user_id, **flags}
            self.w.run(
                "INSERT INTO syn2mas__users (user_id, username, created_at, locked_at, deactivated_at,"
                " can_request_admin, is_guest, hashed_password, password_version, provision_pending, devices_dirty)"
                " VALUES (:i, :u, :c, :l, :d, :a, :g, :p, :v, FALSE, FALSE)",
                i=user_id, u=localpart, c=created, l=created if locked else None, d=created if deactivated else None,
                a=bool(admin), g=bool(is_guest), p=password_hash,
                v=MIGRATED_PASSWORD_VERSION if password_hash is not None else None,
            )  # fmt: skip
            migrated += 1
        self._done("users", migrated, skipped, start)

    def threepids(self) -> None:
        start, migrated, skipped = time.monotonic(), 0, 0
        for user_id, medium, address, added_at in self.syn.run(
            "SELECT user_id, medium, address, added_at FROM user_threepids"
        ):
            info = self._user(user_id, "user_threepids")
            if info["id"] is None:
                skipped += 1
                continue
            created = _millis(added_at)
            if medium == "email":
                self.w.run("INSERT INTO syn2mas__user_emails (user_email_id, user_id, email, created_at)"
                           " VALUES (:e, :u, :a, :c)", e=_ulid_at(created), u=info["id"], a=address, c=created)  # fmt: skip
            else:
                self.w.run("INSERT INTO syn2mas__user_unsupported_third_party_ids (user_id, medium, address,"
                           " created_at) VALUES (:u, :m, :a, :c)", u=info["id"], m=medium, a=address, c=created)  # fmt: skip
            migrated += 1
        self._done("third-party IDs", migrated, skipped, start)

    def external_ids(self) -> None:
        start, migrated, skipped = time.monotonic(), 0, 0
        for user_id, auth_provider, subject in self.syn.run(
            "SELECT user_id, auth_provider, external_id FROM user_external_ids"
        ):
            info = self._user(user_id, "user_external_ids")
            if info["id"] is None:
                skipped += 1
                continue
            provider = self.providers.get(auth_provider)
            if provider is None:
                if self.ignore_missing:
                    skipped += 1
                    continue
                raise Fatal(f"missing a mapping for the auth provider with ID {rust_debug(auth_provider)} (used by "
                            f"{user_id} and maybe other users)")  # fmt: skip
            created = _ulid_time(info["id"])
            self.w.run(
                "INSERT INTO syn2mas__upstream_oauth_links (upstream_oauth_link_id, user_id, upstream_oauth_provider_id,"
                " subject, created_at) VALUES (:l, :u, :p, :s, :c)",
                l=_ulid_at(created), u=info["id"], p=provider, s=subject, c=created,
            )  # fmt: skip
            migrated += 1
        self._done("upstream links (external IDs)", migrated, skipped, start)

    def _active(self, info: dict) -> bool:
        return not (info["deactivated"] or info["guest"] or info["appservice"])

    def _access_token(self, session_id: str, token: str, created, expires) -> str:
        token_id = _ulid_at(created)
        self.w.run("INSERT INTO syn2mas__compat_access_tokens (compat_access_token_id, compat_session_id,"
                   " access_token, created_at, expires_at) VALUES (:i, :s, :t, :c, :e)",
                   i=token_id, s=session_id, t=token, c=created, e=expires)  # fmt: skip
        return token_id

    def unrefreshable_access_tokens(self) -> None:
        start, migrated, skipped = time.monotonic(), 0, 0
        deviceless = []
        rows = self.syn.run(
            "SELECT at0.user_id, at0.device_id, at0.token, at0.valid_until_ms, at0.last_validated"
            " FROM access_tokens at0 INNER JOIN devices USING (user_id, device_id)"
            " WHERE at0.puppets_user_id IS NULL AND at0.refresh_token_id IS NULL"
            " UNION ALL"
            " SELECT at0.user_id, at0.device_id, at0.token, at0.valid_until_ms, at0.last_validated"
            " FROM access_tokens at0"
            " WHERE at0.puppets_user_id IS NULL AND at0.refresh_token_id IS NULL AND at0.device_id IS NULL"
        )
        pending_tokens = []
        for user_id, device_id, token, valid_until_ms, last_validated in rows:
            info = self._user(user_id, "access_tokens")
            if info["id"] is None or not self._active(info):
                skipped += 1
                continue
            created = _millis(last_validated) or self.now
            if device_id is not None:
                session_id = self.sessions.setdefault((info["id"], device_id), _ulid_at(created))
            else:
                session_id = _ulid_at(created)
                deviceless.append((session_id, info["id"], created))
            pending_tokens.append((session_id, token, created, _millis(valid_until_ms)))
            migrated += 1
        # MAS writes each kind through its own buffer and commits them together; here the deviceless sessions go
        # first so the tokens' foreign key (restored at the end) is satisfied in any order.
        for session_id, user, created in deviceless:
            self.w.run("INSERT INTO syn2mas__compat_sessions (compat_session_id, user_id, device_id, created_at,"
                       " is_synapse_admin) VALUES (:s, :u, NULL, :c, FALSE)", s=session_id, u=user, c=created)  # fmt: skip
        for args in pending_tokens:
            self._access_token(*args)
        self._done("non-refreshable access tokens", migrated, skipped, start)

    def refreshable_token_pairs(self) -> None:
        start, migrated, skipped = time.monotonic(), 0, 0
        rows = self.syn.run(
            "SELECT rt0.user_id, rt0.device_id, at0.token AS access_token, rt0.token AS refresh_token,"
            " at0.valid_until_ms, at0.last_validated"
            " FROM refresh_tokens rt0 INNER JOIN devices USING (user_id, device_id)"
            " INNER JOIN access_tokens at0 ON at0.refresh_token_id = rt0.id AND at0.user_id = rt0.user_id"
            " AND at0.device_id = rt0.device_id"
            " LEFT JOIN access_tokens at1 ON at1.refresh_token_id = rt0.next_token_id"
            " WHERE NOT at1.used OR at1.used IS NULL"
        )
        for user_id, device_id, access_token, refresh_token, valid_until_ms, last_validated in rows:
            info = self._user(user_id, "refresh_tokens")
            if info["id"] is None or not self._active(info):
                skipped += 1
                continue
            created = _millis(last_validated) or self.now
            session_id = self.sessions.setdefault((info["id"], device_id), _ulid_at(created))
            token_id = self._access_token(session_id, access_token, created, _millis(valid_until_ms))
            self.w.run("INSERT INTO syn2mas__compat_refresh_tokens (compat_refresh_token_id, compat_session_id,"
                       " compat_access_token_id, refresh_token, created_at) VALUES (:i, :s, :a, :t, :c)",
                       i=_ulid_at(created), s=session_id, a=token_id, t=refresh_token, c=created)  # fmt: skip
            migrated += 1
        self._done("refreshable token pairs", migrated, skipped, start)

    def devices(self) -> None:
        start, migrated, skipped = time.monotonic(), 0, 0
        rows = self.syn.run("SELECT user_id, device_id, display_name, last_seen, ip, user_agent FROM devices"
                            " WHERE NOT hidden AND device_id != 'guest_device'")  # fmt: skip
        for user_id, device_id, display_name, last_seen, ip, user_agent in rows:
            info = self._user(user_id, "devices")
            if info["id"] is None:
                skipped += 1
                continue
            if not self._active(info):
                continue
            session_id = self.sessions.setdefault(
                (info["id"], device_id), _ulid_at(datetime.datetime.now(datetime.UTC))
            )
            last_ip = None
            if ip is not None and ip != "-":
                try:
                    last_ip = str(ipaddress.ip_address(ip))
                except ValueError:
                    log.warn("syn2mas::migration", "Failed to parse device IP, ignoring", mxid=user_id,
                             device_id=device_id, ip=ip)  # fmt: skip
            self.w.run(
                "INSERT INTO syn2mas__compat_sessions (compat_session_id, user_id, device_id, human_name, created_at,"
                " is_synapse_admin, last_active_at, last_active_ip, user_agent)"
                " VALUES (:s, :u, :d, :h, :c, :a, :la, CAST(:ip AS INET), :ua)",
                s=session_id, u=info["id"], d=device_id, h=display_name, c=_ulid_time(session_id), a=info["admin"],
                la=_millis(last_seen), ip=last_ip, ua=user_agent,
            )  # fmt: skip
            migrated += 1
        self._done("devices", migrated, skipped, start)


def run(args, config: dict) -> int:
    """syn2mas.rs Options::run."""
    if not args.synapse_config:
        log.error("mas_cli::commands::syn2mas", "Please specify the path to the Synapse configuration file(s).")
        return 1
    synapse = load_synapse_config(args.synapse_config)
    syn_args = synapse_connect_args(synapse, args.synapse_database_uri)
    import pg8000.native

    try:
        syn = pg8000.native.Connection(**syn_args)
    except Exception as error:
        if not (is_database_error(error) or isinstance(error, OSError)):
            raise
        raise Fatal(f"could not connect to Synapse Postgres database: {describe(error)}") from None
    mas = connect(config.get("database") or {})
    try:
        migrate(mas)
    except Exception as error:
        if not is_database_error(error):
            raise
        raise Fatal(f"could not run migrations: {describe(error)}") from None
    if args.syn2mas_command == "migrate":
        # A config sync first (never pruning), so the upstream providers are in the database.
        key = cfg.encryption_key(config["secrets"])
        upstream = (config.get("upstream_oauth2") or {}).get("providers") or []
        store.config_sync(mas, upstream, config.get("clients") or [], key, False, False,
                          cfg.client_secret, cfg.provider_secret)  # fmt: skip
    if not mas.run("SELECT pg_try_advisory_lock(:k)", k=LOCK_KEY)[0][0]:
        log.error("mas_cli::commands::syn2mas", "Failed to acquire syn2mas lock on the database.")
        log.error("mas_cli::commands::syn2mas", "This likely means that another syn2mas instance is already running!")
        return 1
    warnings, errors = synapse_config_check(synapse)
    more_warnings, more_errors = synapse_config_check_against_mas_config(synapse, config)
    warnings, errors = warnings + more_warnings, errors + more_errors
    mas_pre_migration_checks(mas)
    more_warnings, more_errors = synapse_database_check(syn, synapse, config, args.ignore_missing_auth_providers)
    warnings, errors = warnings + more_warnings, errors + more_errors
    sys.stderr.write(report(warnings, errors))
    sys.stderr.flush()
    if errors:
        return EXIT_CODE_CHECK_ERRORS
    if args.syn2mas_command == "check":
        if warnings:
            return EXIT_CODE_CHECK_WARNINGS
        print("Check completed successfully with no errors or warnings.")
        return 0
    providers = {p["synapse_idp_id"]: p["id"]
                 for p in ((config.get("upstream_oauth2") or {}).get("providers") or [])
                 if p.get("synapse_idp_id") is not None}  # fmt: skip
    _migrate(syn, mas, config, synapse, providers, args.dry_run, args.ignore_missing_auth_providers)
    return 0


def _migrate(syn, mas, config: dict, synapse: dict, providers: dict, dry_run: bool, ignore_missing: bool) -> None:
    # SynapseReader::new
    syn.run("BEGIN")
    syn.run("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE")
    mode = "ACCESS SHARE" if dry_run else "EXCLUSIVE"
    for table in SYNAPSE_TABLES_TO_LOCK:
        try:
            syn.run(f"LOCK TABLE {table} IN {mode} MODE NOWAIT")
        except Exception as error:
            if not is_database_error(error):
                raise
            raise Fatal(
                f"error when reading synapse DB: database error whilst locking Synapse table `{table}`: "
                f"{describe(error)}"
            ) from None
    # MasWriter::new
    writer = connect(config.get("database") or {})
    mas.run("BEGIN TRANSACTION ISOLATION LEVEL READ COMMITTED")
    if is_syn2mas_in_progress(mas):
        log.warn("syn2mas::mas_writer", "Partial syn2mas migration has already been done; resetting.")
        for table in MAS_TABLES_AFFECTED_BY_MIGRATION:
            mas.run(f"TRUNCATE syn2mas__{table}")
        indices = [tuple(r) for r in mas.run(
            "SELECT table_name, name, definition FROM syn2mas_restore_indices ORDER BY order_key")]  # fmt: skip
        constraints = [tuple(r) for r in mas.run(
            "SELECT table_name, name, definition FROM syn2mas_restore_constraints ORDER BY order_key")]  # fmt: skip
    else:
        log.info("syn2mas::mas_writer", "Starting new syn2mas migration")
        _temporary_tables(mas)
        indices, constraints = _pause_indices(mas)
        for table_name, name, definition in indices:
            mas.run("INSERT INTO syn2mas_restore_indices (name, table_name, definition) VALUES (:n, :t, :d)",
                    n=name, t=table_name, d=definition)  # fmt: skip
        for table_name, name, definition in constraints:
            mas.run("INSERT INTO syn2mas_restore_constraints (name, table_name, definition) VALUES (:n, :t, :d)",
                    n=name, t=table_name, d=definition)  # fmt: skip
    mas.run("COMMIT")
    writer.run("BEGIN TRANSACTION ISOLATION LEVEL READ COMMITTED")
    server_name = (config.get("matrix") or {}).get("homeserver", cfg.DEFAULT_MATRIX["homeserver"])
    migration = Migration(syn, mas, writer, server_name, providers, ignore_missing)
    migration.users_()
    migration.threepids()
    migration.external_ids()
    migration.unrefreshable_access_tokens()
    migration.refreshable_token_pairs()
    migration.devices()
    syn.run("COMMIT")  # SynapseReader::finish
    # MasWriter::finish
    writer.run("COMMIT")
    mas.run("BEGIN TRANSACTION ISOLATION LEVEL READ COMMITTED")
    _restore_indices(mas, indices, constraints)
    _revert_temporary_tables(mas)
    if dry_run:
        log.warn("syn2mas::mas_writer", "Migration ran in dry-run mode, deleting all imported data")
        tables = ", ".join(f'"{table}"' for table in MAS_TABLES_AFFECTED_BY_MIGRATION)
        mas.run(f"TRUNCATE TABLE {tables} CASCADE")
    mas.run("COMMIT")
    mas.run("SELECT pg_advisory_unlock(:k)", k=LOCK_KEY)
