"""The `mas-cli` command line, with MAS 1.22.0's syntax for the commands the stand-in implements.

    mas-cli [-c|--config PATH]... COMMAND ...     (--config may also follow the subcommand; repeated
                                                 files are merged; default $MAS_CONFIG or config.yaml)
    mas-cli --version                            -> "mas-cli <version>"
    mas-cli config check                         -> "Configuration file looks good", exit 0; or exit 1
    mas-cli config dump                          -> the merged configuration, as YAML
    mas-cli config sync [--prune] [--dry-run]    -> upsert (and prune) the config's `clients`
    mas-cli database migrate                     -> create the stand-in's tables (idempotent)
    mas-cli server [--no-migrate] [--no-worker] [--no-sync]
    mas-cli worker
    mas-cli manage register-user --username U [--password P] [--admin|--no-admin] [--yes]
                                 [--display-name X] [--email E]... [--ignore-password-complexity]
    mas-cli manage set-password U P [--ignore-complexity]
    mas-cli manage promote-admin U | demote-admin U | list-admin-users | provision-all-users
    mas-cli manage kill-sessions U [--dry-run]
    mas-cli manage issue-compatibility-token U [--device-id D] [--yes-i-want-to-grant-synapse-admin-privileges]
    mas-cli templates check
    mas-cli syn2mas --synapse-config S.yaml [--synapse-config ...] [--synapse-database-uri URI]
                    [--ignore-missing-auth-providers] check|migrate [--dry-run]      (syn2mas.py)

Errors end the command with `Error: <message>` on stderr and exit status 1 (usage errors: 2).
Logs go to stderr. Passwords and secrets are never printed.
"""

import argparse
import os
import sys

import yaml

from . import config as cfg
from . import crypto, doctor, log, server, store, syn2mas, version
from .database import Unavailable, connect, describe, is_database_error, migrate
from .homeserver import HomeserverError, from_config
from .server import Fatal

# The config sections each command extracts, as MAS does (crates/cli/src/commands/*.rs).
SECTIONS = {
    ("config", "check"): cfg.ROOT_SECTIONS,
    ("config", "dump"): cfg.ROOT_SECTIONS,
    ("config", "sync"): ("database", "secrets", "clients", "upstream_oauth2"),
    ("database", "migrate"): ("database",),
    ("server", None): cfg.ROOT_SECTIONS,
    ("doctor", None): cfg.ROOT_SECTIONS,
    ("worker", None): cfg.ROOT_SECTIONS,
    ("manage", "register-user"): ("passwords", "database", "matrix"),
    ("manage", "set-password"): ("passwords", "database"),
    ("manage", "issue-compatibility-token"): ("database", "matrix"),
    ("manage", "kill-sessions"): ("database",),
    ("manage", "provision-all-users"): ("database",),
    # syn2mas.rs: DatabaseConfig, PasswordsConfig, MatrixConfig, CaptchaConfig, BrandingConfig,
    # UpstreamOAuth2Config; migrate also SyncConfig (secrets, clients) for its config sync.
    ("syn2mas", "check"): ("database", "passwords", "matrix", "captcha", "branding", "upstream_oauth2"),
    ("syn2mas", "migrate"): (
        "database",
        "passwords",
        "matrix",
        "captcha",
        "branding",
        "upstream_oauth2",
        "secrets",
        "clients",
    ),
    ("templates", "check"): (
        "templates",
        "branding",
        "matrix",
        "experimental",
        "passwords",
        "account",
        "captcha",
        "oauth",
    ),  # crates/cli/src/commands/templates.rs
}
NOT_IMPLEMENTED = {"add-email", "verify-email", "issue-user-registration-token", "lock-user",
                   "unlock-user", "generate"}  # fmt: skip


def _config_option(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument("-c", "--config", action="append", dest=dest, default=argparse.SUPPRESS, metavar="CONFIG",
                        help="Path to the configuration file")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mas-cli", description="matrix-authentication-service (test stand-in)")
    root.add_argument("-V", "--version", action="version", version=f"mas-cli {version()}")
    _config_option(root, "config_0")
    commands = root.add_subparsers(dest="command", metavar="COMMAND")

    def command(parent, name, depth, **kwargs):
        sub = parent.add_parser(name, **kwargs)
        _config_option(sub, f"config_{depth}")
        return sub

    config = command(commands, "config", 1, help="Configuration-related commands")
    config_sub = config.add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True)
    command(config_sub, "check", 2, help="Check the validity of configuration files")
    dump = command(config_sub, "dump", 2, help="Dump the merged configuration tree")
    dump.add_argument("-o", "--output")
    sync = command(config_sub, "sync", 2, help="Sync the clients of the configuration with the database")
    sync.add_argument("--prune", action="store_true")
    sync.add_argument("--dry-run", action="store_true")
    command(config_sub, "generate", 2, help="(not implemented by the stand-in)")

    database = command(commands, "database", 1, help="Manage the database")
    database_sub = database.add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True)
    command(database_sub, "migrate", 2, help="Run database migrations")

    serve = command(commands, "server", 1, help="Runs the web server")
    serve.add_argument("--no-migrate", action="store_true")
    serve.add_argument("--migrate", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--no-worker", action="store_true")
    serve.add_argument("--no-sync", action="store_true")
    command(commands, "worker", 1, help="Run the worker")

    manage = command(commands, "manage", 1, help="Manage the instance")
    manage_sub = manage.add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True)
    register = command(manage_sub, "register-user", 2, help="Register a user")
    register.add_argument("--username")
    register.add_argument("--password")
    register.add_argument("--email", action="append", default=[])
    register.add_argument("--upstream-provider-mapping", action="append", default=[])
    admin = register.add_mutually_exclusive_group()
    admin.add_argument("--admin", action="store_true")
    admin.add_argument("--no-admin", action="store_true")
    register.add_argument("--yes", action="store_true")
    register.add_argument("--display-name")
    register.add_argument("--ignore-password-complexity", action="store_true")
    set_password = command(manage_sub, "set-password", 2, help="Set a user password")
    set_password.add_argument("username")
    set_password.add_argument("password")
    set_password.add_argument("--ignore-complexity", action="store_true")
    for name in ("promote-admin", "demote-admin"):
        command(manage_sub, name, 2).add_argument("username")
    command(manage_sub, "list-admin-users", 2)
    command(manage_sub, "provision-all-users", 2)
    kill = command(manage_sub, "kill-sessions", 2)
    kill.add_argument("username")
    kill.add_argument("--dry-run", action="store_true")
    issue = command(manage_sub, "issue-compatibility-token", 2)
    issue.add_argument("username")
    issue.add_argument("--device-id")
    issue.add_argument("--yes-i-want-to-grant-synapse-admin-privileges", action="store_true")
    for name in ("add-email", "verify-email", "lock-user", "unlock-user", "issue-user-registration-token"):
        command(manage_sub, name, 2, help="(not implemented by the stand-in)").add_argument("rest", nargs="*")

    templates = command(commands, "templates", 1, help="Templates-related commands")
    templates_sub = templates.add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True)
    command(templates_sub, "check", 2)
    command(commands, "doctor", 1, help="Run diagnostics on the deployment")
    # crates/cli/src/commands/syn2mas.rs: its options are clap `global`, so they may follow the subcommand too.
    syn2mas = command(commands, "syn2mas", 1, help="Migrate from Synapse's built-in auth system to MAS")
    syn2mas_sub = syn2mas.add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True)
    check = command(syn2mas_sub, "check", 2, help="Check the setup for potential problems before running a migration")
    migrate_ = command(syn2mas_sub, "migrate", 2, help="Perform a migration. Synapse must be offline during this")
    migrate_.add_argument("--dry-run", action="store_true")
    for depth, sub in ((1, syn2mas), (2, check), (2, migrate_)):
        sub.add_argument("--synapse-config", action="append", dest=f"synapse_config_{depth}",
                         default=argparse.SUPPRESS, metavar="SYNAPSE_CONFIGURATION_FILES")  # fmt: skip
        sub.add_argument("--synapse-database-uri", dest=f"synapse_database_uri_{depth}", default=argparse.SUPPRESS)
        sub.add_argument("--ignore-missing-auth-providers", action="store_true",
                         dest=f"ignore_missing_auth_providers_{depth}", default=argparse.SUPPRESS)  # fmt: skip
    return root


def config_paths(args) -> list[str]:
    given = [p for depth in range(3) for p in getattr(args, f"config_{depth}", [])]
    if given:
        return given
    return os.environ.get("MAS_CONFIG", "config.yaml").split(":")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = args.command or "server"
    sub = getattr(args, "sub", None)
    if command in NOT_IMPLEMENTED or sub in NOT_IMPLEMENTED:
        print(f"Error: `{' '.join(filter(None, (command, sub)))}` is not implemented by the MAS stand-in "
              "(a test double, tests/support/mas_standin)", file=sys.stderr)  # fmt: skip
        return 2
    paths = config_paths(args)
    try:
        config = cfg.load(paths)
        cfg.check(config, SECTIONS.get((command, sub), ("database",)), tuple(paths))
        return run(command, sub, args, config, paths)
    except cfg.Invalid as error:
        for problem in error.problems:
            log.error("mas_cli", problem)
        print(f"Error: invalid configuration {paths}: " + "; ".join(error.problems), file=sys.stderr)
        return 1
    except (Fatal, Unavailable, HomeserverError, syn2mas.Fatal) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        if not is_database_error(error):
            raise
        print(f"Error: database error: {describe(error)}", file=sys.stderr)
        return 1


def _connect(config: dict):
    return connect(config.get("database") or {})


def run(command: str, sub: str | None, args, config: dict, paths: list[str]) -> int:
    if (command, sub) == ("config", "check"):
        log.info("mas_cli::commands::config", "Configuration file looks good", path=str(paths))
        return 0
    if (command, sub) == ("config", "dump"):
        text = yaml.safe_dump(config, default_flow_style=False, sort_keys=False)
        if args.output:
            with open(args.output, "w") as out:
                out.write(text)
        else:
            sys.stdout.write(text)
        return 0
    if (command, sub) == ("templates", "check"):
        templates = config.get("templates") or {}
        for path in (
            templates.get("path") or "./share/templates/",
            templates.get("translations_path") or "./share/translations/",
        ):
            if not os.path.isdir(path):
                raise Fatal(f"Failed to load the templates at {path}")
        log.info("mas_cli::commands::templates", "Templates look good (the stand-in renders none)")
        return 0
    if command == "syn2mas":
        for name, merge in (("synapse_config", True), ("synapse_database_uri", False),
                            ("ignore_missing_auth_providers", False)):  # fmt: skip
            given = [getattr(args, f"{name}_{depth}") for depth in (1, 2) if hasattr(args, f"{name}_{depth}")]
            if merge:
                value = [path for paths in given for path in paths]
            else:
                value = given[-1] if given else (False if name.startswith("ignore") else None)
            setattr(args, name, value)
        args.syn2mas_command = sub
        args.dry_run = getattr(args, "dry_run", False)
        return syn2mas.run(args, config)
    if command == "doctor":
        return doctor.run(config)
    if command == "server":
        flags = {name: getattr(args, name, False) for name in ("no_migrate", "no_sync", "no_worker")}
        return server.serve(config, **flags)
    if command == "worker":
        return server.work(config)
    if (command, sub) == ("config", "sync"):
        # crates/cli/src/commands/config.rs: the encrypter first (a bad encryption file stops here, before the
        # database), then the database, migrated (also with --dry-run), then sync.rs.
        key = cfg.encryption_key(config["secrets"])
        conn = _connect(config)
        migrate(conn)
        upstream = (config.get("upstream_oauth2") or {}).get("providers") or []
        store.config_sync(conn, upstream, config.get("clients") or [], key, args.prune, args.dry_run,
                          cfg.client_secret, cfg.provider_secret)  # fmt: skip
        return 0
    if (command, sub) == ("database", "migrate"):
        applied = migrate(_connect(config))
        log.info("mas_cli::commands::database", "Database migrations done", applied=len(applied))
        return 0
    return manage(sub, args, config)


def _user(conn, username: str) -> dict:
    user = store.find_user(conn, username)
    if user is None:
        raise Fatal("User not found")
    return user


def _normalize(username: str) -> str:
    localpart = username.lstrip("@").split(":", 1)[0]
    if not localpart:
        raise Fatal("Username cannot be empty")
    return localpart


def manage(sub: str, args, config: dict) -> int:
    target = "mas_cli::commands::manage"
    if sub == "register-user":
        if args.upstream_provider_mapping:
            raise Fatal("--upstream-provider-mapping is not implemented by the MAS stand-in")
        if not args.yes or not args.username:
            raise Fatal("the MAS stand-in only registers users non-interactively: give --username and --yes")
        homeserver = from_config(config)
        conn = _connect(config)
        if (
            args.password is not None
            and not args.ignore_password_complexity
            and cfg.passwords_enabled(config)
            and crypto.password_score(args.password) < cfg.minimum_complexity(config)
        ):
            log.error(target, "That password is too weak.")
            return 1
        localpart = _normalize(args.username)
        if store.find_user(conn, localpart) is not None:
            raise Fatal("User already exists")
        if not homeserver.is_localpart_available(localpart):
            raise Fatal("Username not available on homeserver")
        if args.password is not None and not cfg.passwords_enabled(config):
            raise Fatal("Password authentication is disabled")
        if not args.email:
            log.warn(target, "No email address provided, user will need to add one")
        admin = True if args.admin else False if args.no_admin else None
        hashed = crypto.hash_password(args.password) if args.password is not None else None
        user_id = store.create_user(conn, localpart, hashed, admin, args.display_name)
        log.info(target, "User registered", user__id=user_id)
        return 0
    conn = _connect(config)
    if sub == "set-password":
        user = _user(conn, args.username)
        if not args.ignore_complexity and crypto.password_score(args.password) < cfg.minimum_complexity(config):
            log.error(target, "That password is too weak.")
            return 1
        store.set_password(conn, user["user_id"], args.password)
        log.info(target, "Password changed", user__id=user["user_id"], user__username=user["username"])
    elif sub in ("promote-admin", "demote-admin"):
        user = _user(conn, args.username)
        store.set_admin(conn, user["user_id"], sub == "promote-admin")
        message = "User promoted to admin" if sub == "promote-admin" else "User is no longer admin"
        log.info(target, message, user__id=user["user_id"], user__username=user["username"])
    elif sub == "list-admin-users":
        admins = store.rows(conn, "SELECT user_id, username FROM users WHERE can_request_admin ORDER BY username")
        log.info(target, f"The following users can request admin privileges ({len(admins)} total):")
        for user in admins:
            log.info(target, "", user__id=user["user_id"], username=user["username"])
    elif sub == "provision-all-users":
        for (user_id,) in conn.run("UPDATE users SET provision_pending = TRUE RETURNING user_id"):
            log.info(target, "Scheduling provisioning job", user__id=user_id)
    elif sub == "kill-sessions":
        user = _user(conn, args.username)
        if args.dry_run:
            count = len(store.active_devices(conn, user["user_id"]))
            log.info(target, f"Would end {count} active compatibility sessions (dry run)")
        else:
            count = store.finish_sessions(conn, user["user_id"])
            log.info(target, f"Ended {count} active compatibility sessions")
            log.warn(target, "Scheduling job to sync devices for the user")
    elif sub == "issue-compatibility-token":
        user = _user(conn, args.username)
        device_id = args.device_id or crypto.device_id()
        admin = args.yes_i_want_to_grant_synapse_admin_privileges
        session = store.start_compat_session(conn, user["user_id"], device_id, None, admin=admin)
        conn.run("UPDATE users SET devices_dirty = TRUE WHERE user_id = :i", i=user["user_id"])
        log.info(target, "Compatibility token issued", compat_session__id=session["compat_session_id"],
                 compat_session__device=device_id, user__id=user["user_id"], admin=admin)  # fmt: skip
        # Printing the token is this command's purpose (MAS prints it the same way).
        print(session["access_token"])
    return 0
