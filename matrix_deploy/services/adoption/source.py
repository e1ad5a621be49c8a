"""What an adoption reads from the Synapse it takes over, and what it refuses, before anything changes.

One look at the old homeserver's host (the `Source` fact, as root): its config read by its own Python and
PyYAML, merged as Synapse merges its `--config-path`s (files in order, a directory's `*.yaml` files sorted, each
file's top-level keys over the earlier ones); its version; its unit. And one at each cluster (the `Cluster` fact):
the deployment's database host (the adoption's record, MAS's users, the deployment's Synapse tables) and, when the
old Synapse runs on another host, that host's (its databases). The old homeserver's secrets (signing key, macaroon and form secrets, password pepper) are
not in the fact's output: the same command writes them into the login user's own upload directory, from where
they are fetched over SFTP into memory and removed (never on a command line, in output or in a file another
user can read), then put in the secrets store. Across hosts the same file also carries the whole merged config, from which the
adoption writes the root-only config syn2mas reads on the database host (service.py).
"""

import io
import json
import re
import shlex
from dataclasses import dataclass, field

from pyinfra import inventory
from pyinfra.api import FactBase
from pyinfra.api.exceptions import DeployError

from matrix_deploy.engine import debian
from matrix_deploy.engine.paths import STATE
from matrix_deploy.engine.uploads import LOGIN_UPLOAD_DIR
from matrix_deploy.operator import store
from matrix_deploy.operator.inventory import Deployment
from matrix_deploy.operator.settings import version_tuple
from matrix_deploy.services.adoption.options import client_secrets

RECORD = f"{STATE}/adoption"  # where the adoption stands (on the database host): one of STATES
# In order; copying, copied and restored only across hosts (relay.py), moving only on one host (adopt.sh.j2).
STATES = ("copying", "copied", "checked", "restored", "migrating", "moving", "migrated", "delegated")
DONE = (
    "migrated",
    "delegated",
)  # syn2mas has imported: the store holds the old secrets, the old config is judged no more
SECRETS_FILE = "adoption-secrets.json"
# The secrets store's entries an adoption takes from the old config (key in the old config -> entry).
TAKEN = {
    "signing_key": "synapse_signing_key",
    "macaroon_secret_key": "synapse_macaroon_secret_key",
    "form_secret": "synapse_form_secret",
    "pepper": "synapse_password_pepper",
}
# Password provider modules that mean LDAP (MAS cannot take LDAP logins: an OIDC bridge such as Dex can).
LDAP_MODULES = ("ldap_auth_provider",)

# Run by the old Synapse's Python: argv = secrets file ("-": none), "whole" (the merged config too) or "-", then the
# config paths.
READ_CONFIG = r"""
import json, os, sys
import yaml
out, whole, paths = sys.argv[1], sys.argv[2] == "whole", sys.argv[3:]
files = []
for path in paths:
    if os.path.isdir(path):
        files += sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".yaml") and not f.startswith("."))
    else:
        files.append(path)
config = {}
for path in files:
    try:
        with open(path) as f:
            config.update(yaml.safe_load(f) or {})
    except Exception as e:  # only where and what: a YAML error would quote the line, maybe a secret
        mark = getattr(e, "problem_mark", None)
        print("%s: %s%s" % (path, type(e).__name__, " at line %d" % (mark.line + 1) if mark else ""))
        sys.exit(0)
import synapse
def enabled(section):
    return isinstance(section, dict) and section.get("enabled", True) is not False
database = config.get("database") or {"name": "sqlite3", "args": {"database": "homeserver.db"}}
args = database.get("args") or {}
password = config.get("password_config") or {}
providers, sections = [], {}  # as Synapse names them in user_external_ids (syn2mas's Config::all_oidc_providers)
if enabled(config.get("oidc_config")):
    providers.append([(config["oidc_config"] or {}).get("idp_id") or "oidc", config["oidc_config"].get("issuer")])
    sections[providers[-1][0]] = config["oidc_config"]
for p in config.get("oidc_providers") or []:
    i = p.get("idp_id")
    providers.append(["oidc" if i in (None, "oidc") else "oidc-" + i, p.get("issuer")])
    sections[providers[-1][0]] = p
def client_secret(section):  # as Synapse reads it (config/oidc.py): client_secret, else client_secret_path's file
    if section.get("client_secret") is None and section.get("client_secret_path"):
        with open(section["client_secret_path"]) as f:
            return f.read().rstrip("\n")
    return str(section.get("client_secret") or "")
modules = [m.get("module") for m in config.get("modules") or [] if isinstance(m, dict)]
facts = {
    "version": synapse.__version__,
    "files": files,
    "server_name": config.get("server_name"),
    "database": {"name": database.get("name"), "dbname": args.get("dbname") or args.get("database"),
                 "user": args.get("user"), "host": args.get("host"), "port": args.get("port")},
    "allow_guest_access": bool(config.get("allow_guest_access")),
    "enable_3pid_changes": bool(config.get("enable_3pid_changes")),
    "cas": enabled(config.get("cas_config")) and bool(config.get("cas_config")),
    "saml2": enabled(config.get("saml2_config")) and bool(config.get("saml2_config")),
    "jwt": enabled(config.get("jwt_config")) and bool(config.get("jwt_config")),
    "password_providers": [p.get("module") for p in config.get("password_providers") or [] if isinstance(p, dict)],
    "modules": modules,
    "oidc_providers": providers,
    "password_enabled": password.get("enabled", True) is not False,
    "media_store_path": config.get("media_store_path"),
    "signing_key_path": config.get("signing_key_path"),
    "has_pepper": bool(password.get("pepper")),
    "app_services": [str(p) for p in config.get("app_service_config_files") or []],
}
print("C\t" + json.dumps(facts))
if out != "-":
    with open(config["signing_key_path"]) as f:
        key = f.read()
    taken = {"signing_key": key, "pepper": password.get("pepper") or ""}
    for name in ("macaroon_secret_key", "form_secret"):
        if config.get(name):
            taken[name] = config[name]
    taken["oidc_client_secrets"] = {name: client_secret(s) for name, s in sections.items() if client_secret(s)}
    if whole:
        taken["config"] = config
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(taken, f)
"""


@dataclass
class Old:
    """The old homeserver as its host showed it, and the deployment's database host (no secrets)."""

    record: str = ""  # the adoption's record on the database host: "" (not begun) or one of STATES
    active: str = ""  # its unit's systemctl is-active
    enabled: str = ""
    config: dict = field(default_factory=dict)  # READ_CONFIG's facts; {} when they could not be read
    problem: str = ""  # why the config could not be read
    databases: list[str] = field(default_factory=list)  # the databases of the old Synapse's cluster
    mas_users: int = 0  # users in MAS's database
    synapse_tables: int = 0  # tables in the deployment's Synapse database (when it is not the old one)
    secrets_file: str = ""  # where the command left the secrets for the download ("" when it did not)
    across: bool = False  # the old Synapse runs on a host of its own (no role), not on the database host
    postgres: int = 0  # across hosts: the old cluster's PostgreSQL major version (0: unknown)
    target_postgres: int = 0  # across hosts: the database host's (its running cluster's, else its Debian's; 0: unknown)


class Source(FactBase):
    """The old Synapse: its unit, its config (and with `secrets`, its secrets in a file to fetch; with `whole`,
    the whole merged config in that file too)."""

    def command(self, python, config, unit, secrets, whole=False):
        q = shlex.quote
        paths = " ".join(q(p) for p in config)
        out = "-"
        lines = []
        if secrets:
            lines.append(f'{LOGIN_UPLOAD_DIR}; out="$dir/{SECRETS_FILE}"')
            out = '"$out"'
        lines += [
            f'printf \'S\\t%s\\t%s\\n\' "$(systemctl is-active {q(unit)})" "$(systemctl is-enabled {q(unit)} 2>/dev/null)"',
            f"if [ -x {q(python)} ]; then",
            f"  (cd / && umask 077 && {q(python)} -c {q(READ_CONFIG)} {out} {'whole' if whole else '-'} {paths}) 2>&1"
            " | sed '/^C\t/!s/^/E\t/'",
            f"else printf 'E\\t%s\\n' 'no executable {python}'; fi",
        ]
        if secrets:
            lines.append(
                '[ ! -f "$out" ] || { [ -z "${SUDO_USER:-}" ] || chown "$SUDO_USER" "$out"; printf \'F\\t%s\\n\' "$out"; }'
            )
        return "\n".join([*lines, "true"])

    def process(self, output):
        old, errors = Old(), []
        for line in output:
            tag, _, rest = line.partition("\t")
            if tag == "S":
                old.active, _, old.enabled = rest.partition("\t")
            elif tag == "C":
                old.config = json.loads(rest)
            elif tag == "E":
                errors.append(rest)
            elif tag == "F":
                old.secrets_file = rest
        if not old.config:
            # The last lines of what went wrong (a traceback ends with the error).
            old.problem = " / ".join(e.strip() for e in errors[-3:] if e.strip()) or "no output"
        return old


@dataclass
class ClusterFacts:
    record: str = ""
    databases: list[str] = field(default_factory=list)
    mas_users: int = 0
    synapse_tables: int = 0
    postgres: int = 0  # the running cluster's major version (0: none answers)
    os: tuple[str, str] = ("", "")  # ID and VERSION_ID from /etc/os-release


class Cluster(FactBase):
    """A host's adoption record and its PostgreSQL cluster at `port`: databases, MAS's users, Synapse's tables."""

    def command(self, port):
        psql = f"runuser -u postgres -- psql -X -At -p {int(port)}"
        return "\n".join([
            f"printf 'M\\t%s\\n' \"$(cat {RECORD} 2>/dev/null)\"",
            "(. /etc/os-release 2>/dev/null; printf 'O\\t%s\\t%s\\n' \"${ID:-}\" \"${VERSION_ID:-}\")",
            f"if (cd / && {psql} -c 'SELECT 1') >/dev/null 2>&1; then",
            f"  (cd / && {psql} -c 'SHOW server_version_num') | sed 's/^/V\\t/'",
            f"  (cd / && {psql} -c 'SELECT datname FROM pg_database') | sed 's/^/D\\t/'",
            f"  (cd / && {psql} -d mas -c 'SELECT count(*) FROM users') 2>/dev/null | sed 's/^/U\\t/'",
            f"  (cd / && {psql} -d synapse -c \"SELECT count(*) FROM pg_tables WHERE schemaname = 'public'\") 2>/dev/null"
            " | sed 's/^/T\\t/'",
            "fi",
            "true",
        ])  # fmt: skip

    def process(self, output):
        found = ClusterFacts()
        for line in output:
            tag, _, rest = line.partition("\t")
            if tag == "M":
                found.record = rest.strip()
            elif tag == "D":
                found.databases.append(rest)
            elif tag == "U" and rest.isdigit():
                found.mas_users = int(rest)
            elif tag == "T" and rest.isdigit():
                found.synapse_tables = int(rest)
            elif tag == "V" and rest.isdigit():
                found.postgres = int(rest) // 10000
            elif tag == "O":
                os_id, _, version = rest.partition("\t")
                found.os = (os_id, version)
        return found


def refusals(d: Deployment, old: Old) -> list[str]:
    """Why this homeserver cannot be adopted by this deployment: each problem with what is expected. Only what
    could still change is checked once the adoption has migrated (the record says how far it went)."""
    s, source = d.settings, d.settings.adopt_synapse
    where = f"adopt_synapse (host {source.host})"
    if old.record in DONE:
        return []
    if not old.config:
        return [
            f"{where}: the old Synapse's config could not be read with {source.python} from "
            f"{', '.join(source.config)} ({old.problem}); expected adopt_synapse.python and .config to be those of "
            "the running Synapse (its unit's ExecStart shows them)"
        ]
    c, problems = old.config, []
    database = c["database"]
    if database["name"] != "psycopg2":
        return [
            f"{where}: the old Synapse's database is {database['name']} ({database.get('dbname') or '?'}): syn2mas reads "
            "PostgreSQL only; expected a Synapse on PostgreSQL: port it first with synapse_port_db "
            "(https://element-hq.github.io/synapse/latest/postgres.html), then run again"
        ]
    if c["server_name"] != s.matrix_server_name:
        problems.append(
            f"{where}: the old Synapse's server_name is {c['server_name']!r}, matrix_server_name is "
            f"{s.matrix_server_name!r}: expected the same name (user IDs, rooms and the signing key belong to it)"
        )
    if version_tuple(c["version"]) > version_tuple(s.synapse_version):
        problems.append(
            f"{where}: the old Synapse is {c['version']}, newer than synapse_version = {s.synapse_version!r}: its "
            f"database schema would be ahead of the software; expected synapse_version {c['version']} or newer"
        )
    for key, what in (
        ("allow_guest_access", "guest access is enabled (allow_guest_access): MAS has no guests"),
        ("enable_3pid_changes", "enable_3pid_changes is true: with MAS, emails are changed in MAS"),
        ("cas", "it logs users in with CAS (cas_config): MAS cannot take CAS logins"),
        ("saml2", "it logs users in with SAML (saml2_config): MAS cannot take SAML logins (an OIDC bridge such as Dex can)"),
        ("jwt", "it logs users in with JWT (jwt_config): MAS cannot take JWT logins"),
    ):  # fmt: skip
        if c[key]:
            problems.append(f"{where}: {what}; expected it turned off in the old Synapse's config, then run again")
    providers = [*c["password_providers"], *(m for m in c["modules"] if m and m.startswith(LDAP_MODULES))]
    if providers:
        problems.append(
            f"{where}: password providers {', '.join(map(str, providers))}: MAS cannot take them (an LDAP directory can "
            "be reached through an OIDC bridge such as Dex); expected none in the old Synapse's config"
        )
    mapped = {p.synapse_idp_id for p in s.mas_upstream_providers}
    for idp_id, issuer in c["oidc_providers"]:
        if idp_id not in mapped:
            problems.append(
                f"{where}: the old Synapse logs users in through the OIDC provider {idp_id} (issuer {issuer!r}): "
                f"expected a mas_upstream_providers entry for it with synapse_idp_id: {idp_id!r} (its users' links "
                "become links to that provider in MAS)"
            )
    if c.get("app_services") and not s.synapse_extra_config.get("app_service_config_files"):
        problems.append(
            f"{where}: the old Synapse has application services (app_service_config_files: "
            f"{', '.join(c['app_services'])}): the deployment does not carry them over, and without them their bridges "
            "stop working (syn2mas leaves their users to Synapse); expected synapse_extra_config's "
            "app_service_config_files naming copies of these registrations on the Synapse hosts that the synapse user "
            "can read"
        )
    if not c["password_enabled"]:
        problems.append(f"{where}: password_config.enabled is false: expected the old Synapse's own password logins")
    if not c.get("signing_key_path"):
        problems.append(f"{where}: the old config has no signing_key_path: expected the path of its signing key")
    if not c.get("media_store_path") or not str(c["media_store_path"]).startswith("/"):
        problems.append(f"{where}: media_store_path = {c.get('media_store_path')!r}: expected an absolute path")
    problems += _database_problems(d, old, where)
    return problems


LOCAL = (None, "", "localhost", "127.0.0.1", "::1")
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _database_problems(d: Deployment, old: Old, where: str) -> list[str]:
    s, database = d.settings, old.config["database"]
    name, user = database["dbname"], database["user"]
    problems = []
    if not all(isinstance(n, str) and IDENTIFIER.match(n) for n in (name, user)):
        return [
            f"{where}: the old database {name!r} (role {user!r}): expected plain PostgreSQL names (lower-case letters, "
            "digits and _)"
        ]
    local = database["host"] in LOCAL or str(database["host"]).startswith("/")
    if old.across and not local:
        problems.append(
            f"{where}: the old database is at {database['host']}:{database['port'] or 5432}: expected it in the "
            f"PostgreSQL cluster of {s.adopt_synapse.host} itself (localhost), where the adoption dumps it"
        )
    elif not old.across and (not local or int(database["port"] or 5432) != s.postgres_port):
        problems.append(
            f"{where}: the old database is at {database['host']}:{database['port'] or 5432}: expected it in the "
            f"PostgreSQL cluster of this host (localhost, port {s.postgres_port}, postgres_port)"
        )
    elif name not in old.databases:
        problems.append(
            f"{where}: the old database {name!r} is not in the cluster of {s.adopt_synapse.host}: expected it there"
        )
    if old.across and old.postgres > old.target_postgres > 0:
        problems.append(
            f"{where}: the old database's PostgreSQL is {old.postgres}, the deployment's host's {old.target_postgres}: "
            "a dump of a newer PostgreSQL cannot be restored into an older one; expected the old host's PostgreSQL "
            f"no newer than {old.target_postgres} (or the deployment's host on a Debian release with a newer one)"
        )
    if not old.across and (user in ("synapse", "mas") or name == "mas"):
        problems.append(
            f"{where}: the old database {name!r} (role {user!r}) uses a name of the deployment's own databases and "
            "roles (synapse, mas): expected another role name (ALTER ROLE ... RENAME, and the same in homeserver.yaml)"
        )
    if old.record == "" and old.mas_users:
        problems.append(
            f"{where}: MAS's database already holds {old.mas_users} users: expected an empty MAS database "
            "(syn2mas imports into a new one)"
        )
    if old.record == "" and (old.across or name != "synapse") and old.synapse_tables:
        problems.append(
            f"{where}: the deployment's Synapse database already holds a homeserver ({old.synapse_tables} tables): "
            "expected a deployment without one (an adoption brings its own)"
        )
    return problems


_read: dict[str, Old] = {}
_whole: dict[str, dict] = {}  # across hosts: the old Synapse's whole merged config (it holds secrets), by its host


def read(d: Deployment) -> Old:
    """The old homeserver (once per run, whichever host asks first), its secrets put in the store while the
    adoption has not imported; DeployError when it cannot be adopted."""
    source, placement = d.settings.adopt_synapse, d.settings.placement
    if source.host in _read:
        return _read[source.host]
    old_host, target = inventory.get_host(source.host), inventory.get_host(placement.db)
    across = source.host != placement.db
    here = target.get_fact(Cluster, port=d.settings.postgres_port)
    secrets = here.record not in DONE  # once imported the store holds them: not read or fetched again
    old = old_host.get_fact(Source, python=source.python, config=list(source.config), unit=source.unit,
                            secrets=secrets, whole=across and secrets)  # fmt: skip
    old.record, old.mas_users, old.synapse_tables, old.across = here.record, here.mas_users, here.synapse_tables, across
    old.databases = here.databases
    taken = {}
    if old.secrets_file:
        buffer = io.BytesIO()
        try:
            old_host.get_file(old.secrets_file, buffer)
        finally:
            old_host.run_shell_command(f"rm -f {shlex.quote(old.secrets_file)}", _sudo=False)
        taken = json.loads(buffer.getvalue().decode())
    database = old.config.get("database") or {}
    if across and secrets and database.get("name") == "psycopg2":
        cluster = old_host.get_fact(Cluster, port=int(database.get("port") or 5432))
        old.databases, old.postgres = cluster.databases, cluster.postgres
        target_release = debian.release(*here.os)
        old.target_postgres = here.postgres or (target_release.postgres if target_release else 0)
    problems = refusals(d, old)
    if problems:
        raise DeployError(
            "the adoption is refused, nothing was changed and the old Synapse still runs:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    if taken and old.record not in DONE:
        _take(d, taken)
        if across:
            _whole[source.host] = taken["config"]
    if problem := lacking_client_secrets(d):
        raise DeployError(f"the adoption is refused, nothing was changed and the old Synapse still runs: {problem}")
    _read[source.host] = old
    return old


def whole_config(d: Deployment) -> dict:
    """Across hosts, before the import: the old Synapse's merged config as read() fetched it (holds secrets)."""
    return _whole[d.settings.adopt_synapse.host]


def _take(d: Deployment, taken: dict) -> None:
    values = {TAKEN[key]: value for key, value in taken.items() if key in TAKEN}
    # The old OIDC providers' client secrets go to the upstream providers that take their links, unless the store
    # has one already (the operator's, or a new one the provider gave for MAS's redirect URI).
    old_secrets = taken.get("oidc_client_secrets") or {}
    for idp_id, entry in client_secrets(d.settings).items():
        if entry not in d.secrets.values and old_secrets.get(idp_id):
            values[entry] = old_secrets[idp_id]
    # Keep the deployment's own where the old one would not do (too short for the store's rules).
    for name in ("synapse_macaroon_secret_key", "synapse_form_secret"):
        if name in values and len(values[name].strip()) < store.MIN_LENGTH[name]:
            del values[name]
    store.adopt(d.secrets_file, d.secrets, values, d.settings.secrets_age_identity)


def lacking_client_secrets(d: Deployment) -> str:
    """Why an upstream provider that takes an old provider's links has no client secret ("" when all have one)."""
    lacking = [f"{entry} (synapse_idp_id {idp_id!r})" for idp_id, entry in client_secrets(d.settings).items()
               if entry not in d.secrets.values]  # fmt: skip
    if not lacking:
        return ""
    return (
        f"neither the secrets store nor the old Synapse's OIDC providers hold the client secrets {', '.join(lacking)}; "
        "expected each in the store, put there by hand (the secret the provider gave you), or the provider's "
        "token_endpoint_auth_method none"
    )
