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
"""

import shlex

from pyinfra import host
from pyinfra.api.exceptions import DeployError

from matrix_deploy.engine import host_state, remote
from matrix_deploy.engine.paths import STATE
from matrix_deploy.engine.render import render
from matrix_deploy.engine.units import system_user
from matrix_deploy.operator.inventory import Deployment
from matrix_deploy.services.adoption import source as old_homeserver
from matrix_deploy.services.adoption.source import RECORD, STATES, Old
from matrix_deploy.services.mas.paths import MAS_CONFIG, MAS_HOME
from matrix_deploy.services.postgres.databases import DATABASES
from matrix_deploy.services.synapse.paths import SYNAPSE_DATA, SYNAPSE_USER

SCRIPT = f"{STATE}/adopt.sh"
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
    return render(
        "adoption/adopt.sh.j2", server_name=s.matrix_server_name, unit=source.unit, record=RECORD,
        release_dir=f"{MAS_HOME}/{s.mas_version}", mas_config=MAS_CONFIG,
        files=[shlex.quote(f) for f in c["files"]], port=s.postgres_port, accept=list(s.adopt_accept_warnings),
        backup_dir=s.backup_dir, database=c["database"]["dbname"], mas_database=DATABASES["mas"],
        role=f"'{role}'", synapse_user=SYNAPSE_USER, media=MEDIA, old_media=shlex.quote(c["media_store_path"]),
        synapse_health=f"http://127.0.0.1:{s.synapse_port}/health",
    )  # fmt: skip


def adopt(d: Deployment, old: Old | None) -> None:
    """The adoption stage on the adopted host: check and dry run, then stop, dump, import and copy."""
    if imported(old) or host.name != d.settings.adopt_synapse.host:
        return
    host_state.put("Adoption script", SCRIPT, script(d, old), "root", "root", "700", diff=False)
    system_user("Synapse", SYNAPSE_USER, SYNAPSE_DATA)  # the copied media's owner, on a fresh host
    remote.shell(
        name="Adoption: syn2mas check, then a dry run, while the old Synapse serves",
        commands=[f"sh {SCRIPT} check"],
    )
    remote.shell(
        name=f"Adoption: stop {d.settings.adopt_synapse.unit}, dump its database, import into MAS, copy the data",
        commands=[f"sh {SCRIPT} migrate"],
    )


def finish(d: Deployment, old: Old | None) -> None:
    """After Synapse's stage: the deployment's Synapse answers on the adopted data, the adoption is delegated."""
    if old is None or old.record == "delegated" or host.name != d.settings.adopt_synapse.host:
        return
    if imported(old):  # migrated in an earlier run: adopt() put no script in this one
        host_state.put("Adoption script", SCRIPT, script(d, old), "root", "root", "700", diff=False)
    remote.shell(
        name="Adoption: the deployment's Synapse serves the adopted homeserver", commands=[f"sh {SCRIPT} finish"]
    )
