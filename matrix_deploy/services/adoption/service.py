"""Adopting a Synapse that already runs: its users, sessions, rooms, media and signing key move under this
deployment and MAS, by `mas-cli syn2mas` the way MAS's migration guide does it.

Before anything changes (source.py): the old config is read and what MAS cannot take is refused; its secrets go
into the store. Then the deploy runs as always, with three differences until the adoption is done: PostgreSQL
still lets the old Synapse in, MAS is installed but not started, and between MAS's stage and Synapse's the
adoption stage runs the host's adoption script (templates/adoption/adopt.sh.j2): syn2mas check and a dry run
while the old Synapse serves, then the stop, a dump, the import, the copy of its database and media; MAS starts;
Synapse's stage starts the deployment's Synapse on the copy. The host records each step (source.RECORD), so a
run that died is taken up where it stood, and once delegated a run adds nothing. The old Synapse is stopped and
disabled, its files left as they were: starting it again is the way back, until the operator gives it up by
removing adopt_synapse once the adoption is delegated (MAS keeps the old pepper from the store).

Everything happens on the database host (which also runs Synapse's main process and the first MAS instance). The
old Synapse runs there, or on a host of the inventory with no role: then the adoption's operations on the database
host relay its database and media from there (relay.py), syn2mas reads a root-only copy of its merged config
(SYN2MAS_CONFIG) with the database pointing at the restored copy, and the old host gets nothing but its unit
stopped and disabled and a last dump of its database kept in backup_dir.
"""

import shlex

import yaml
from pyinfra import host
from pyinfra.api.exceptions import DeployError

from matrix_deploy.engine import host_state, remote
from matrix_deploy.engine.paths import STATE
from matrix_deploy.engine.render import render
from matrix_deploy.engine.units import system_user
from matrix_deploy.operator.inventory import Deployment
from matrix_deploy.services.adoption import relay
from matrix_deploy.services.adoption import source as old_homeserver
from matrix_deploy.services.adoption.source import RECORD, STATES, Old
from matrix_deploy.services.mas.paths import MAS_CONFIG, MAS_HOME
from matrix_deploy.services.postgres.databases import DATABASES
from matrix_deploy.services.synapse.paths import SYNAPSE_DATA, SYNAPSE_USER

SCRIPT = f"{STATE}/adopt.sh"
SYN2MAS_CONFIG = f"{STATE}/adoption-homeserver.yaml"  # across hosts: the old config, as syn2mas reads it here
# The keys of Synapse's config syn2mas reads (MAS 1.22.0, crates/syn2mas/src/synapse_reader/config/mod.rs, Config):
# SYN2MAS_CONFIG holds these only, so it carries none of the old config's other secrets.
SYN2MAS_KEYS = (
    "database", "password_config", "bcrypt_rounds", "allow_guest_access", "enable_registration",
    "enable_registration_captcha", "recaptcha_public_key", "recaptcha_private_key", "enable_3pid_changes",
    "enable_set_display_name", "user_consent", "registrations_require_3pid", "registration_requires_token",
    "registration_shared_secret", "login_via_existing_session", "cas_config", "saml2_config", "jwt_config",
    "oidc_config", "oidc_providers", "server_name", "public_baseurl",
)  # fmt: skip
MEDIA = f"{SYNAPSE_DATA}/media_store"
MOVED_ASIDE = "synapse_before_mas"  # the old database's name once moved aside, when it was named synapse


def read(d: Deployment) -> Old | None:
    """The old homeserver (source.read), or None without adopt_synapse; refuses (DeployError) what cannot be,
    and a run without adopt_synapse on a host where an adoption has begun and is not delegated."""
    if d.settings.adopt_synapse:
        return old_homeserver.read(d)
    snapshot = host_state.current()
    if snapshot.entry(RECORD) is not None and not snapshot.is_file(RECORD, "delegated\n"):
        stands = next((s for s in STATES if snapshot.is_file(RECORD, s + "\n")), "begun")
        raise DeployError(
            f"{host.name}: an adoption of a Synapse is {stands} here and not done ({RECORD}), but adopt_synapse is "
            "unset: expected adopt_synapse as it was until the adoption is delegated (without it MAS and Synapse "
            "would start on a half-moved homeserver). Nothing was changed."
        )
    return None


def imported(old: Old | None) -> bool:
    """Whether MAS may run: nothing to adopt, or syn2mas has imported (MAS must not run before the import)."""
    return old is None or old.record in ("migrated", "delegated")


def hba_lines(d: Deployment, old: Old | None, here: str) -> list[str]:
    """pg_hba.conf lines that keep letting the old Synapse (and syn2mas, as it) into its database, on the
    adopted host, while adopt_synapse is set: the old Synapse serves until the adoption stops it, and may be
    started again as the way back."""
    if old is None or here != d.settings.adopt_synapse.host or not old.config:
        return []
    database, role = old.config["database"]["dbname"], old.config["database"]["user"]
    names = f"{database},{MOVED_ASIDE}" if database == "synapse" else database
    return [f"host    {names}    {role}    {network}    md5" for network in ("127.0.0.1/32", "::1/128")]


def script(d: Deployment, old: Old) -> str:
    s, source, c = d.settings, d.settings.adopt_synapse, old.config
    role = c["database"]["user"].replace("'", "''")
    files = [SYN2MAS_CONFIG] if old.across else c["files"]
    return render(
        "adoption/adopt.sh.j2", server_name=s.matrix_server_name, unit=source.unit, record=RECORD,
        across=old.across, old_host=source.host, syn2mas_config=SYN2MAS_CONFIG, release_dir=f"{MAS_HOME}/{s.mas_version}", mas_config=MAS_CONFIG,
        files=[shlex.quote(f) for f in files], port=s.postgres_port, accept=list(s.adopt_accept_warnings),
        backup_dir=s.backup_dir, database=c["database"]["dbname"], mas_database=DATABASES["mas"],
        role=f"'{role}'", synapse_user=SYNAPSE_USER, media=MEDIA, old_media=shlex.quote(c["media_store_path"]),
        synapse_health=f"http://127.0.0.1:{s.synapse_port}/health",
    )  # fmt: skip


def syn2mas_config(d: Deployment) -> str:
    """Across hosts: the old Synapse's merged config with its database the restored copy here, reached as the
    deployment's Synapse reaches it; only the keys syn2mas reads (it opens no file the config names)."""
    s = d.settings
    database = {
        "name": "psycopg2",
        "args": {"user": "synapse", "password": d.secrets["synapse_db_password"], "dbname": "synapse",
                 "host": s.placement.reach(s.placement.db, s.placement.db), "port": s.postgres_port},
    }  # fmt: skip
    whole = old_homeserver.whole_config(d)
    kept = {key: whole[key] for key in SYN2MAS_KEYS if key in whole}
    return yaml.safe_dump({**kept, "database": database}, sort_keys=False)


def adopt(d: Deployment, old: Old | None) -> None:
    """The adoption stage on the database host: check and dry run, then stop, dump, import and copy (across hosts,
    with the relay's copies before each)."""
    s = d.settings
    if imported(old) or host.name != s.placement.db:
        return
    host_state.put("Adoption script", SCRIPT, script(d, old), "root", "root", "700", diff=False)
    system_user("Synapse", SYNAPSE_USER, SYNAPSE_DATA)  # the copied media's owner, on a fresh host
    source, database = s.adopt_synapse, old.config["database"]
    relayed = dict(old_name=source.host, target_upload_dir=host_state.current().upload_dir, script=SCRIPT,
                   local_dir=str(d.secrets_file.parent / "adoption-relay"),
                   port=int(database["port"] or 5432), database=database["dbname"],
                   old_media=old.config["media_store_path"])  # fmt: skip
    if old.across:
        host_state.secret("The old Synapse's config, for syn2mas", SYN2MAS_CONFIG, syn2mas_config(d), "root", "root",
                          "600")  # fmt: skip
        relay.copy(name=f"Adoption: the database and media of {source.host}, copied here while it serves", **relayed)
    remote.shell(
        name="Adoption: syn2mas check, then a dry run, while the old Synapse serves",
        commands=[f"sh {SCRIPT} check"],
    )
    if old.across:
        relay.final(
            name=f"Adoption: stop {source.unit} on {source.host}, restore its last dump here, catch up its media",
            unit=source.unit, backup_dir=s.backup_dir, **relayed,
        )  # fmt: skip
    remote.shell(
        name=f"Adoption: stop {source.unit}, dump its database, import into MAS, copy the data"
        if not old.across
        else "Adoption: import into MAS",
        commands=[f"sh {SCRIPT} migrate"],
    )


def finish(d: Deployment, old: Old | None) -> None:
    """After Synapse's stage: the deployment's Synapse answers on the adopted data, the adoption is delegated."""
    if old is None or old.record == "delegated" or host.name != d.settings.placement.db:
        return
    if imported(old):  # migrated in an earlier run: adopt() put no script in this one
        host_state.put("Adoption script", SCRIPT, script(d, old), "root", "root", "700", diff=False)
    remote.shell(
        name="Adoption: the deployment's Synapse serves the adopted homeserver", commands=[f"sh {SCRIPT} finish"]
    )
