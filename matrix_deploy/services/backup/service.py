"""Scheduled, encrypted backups with restic, and the restore that puts them back before the services start.

Each host with data backs up its own part, daily (a systemd timer), into the one repository (`backup_repository`),
as snapshots of the homeserver (restic's host: the server name) tagged with the host's roles: the database host
both databases (pg_dump, into a root-only staging directory), Synapse's main host its media store and signing key.
MAS keeps nothing on its host that the secrets store does not hold (secret_table.py), so its part is its database.
The repository's password is a secret of the store, a root-only file on the hosts (RESTIC_PASSWORD_FILE).
"""

import hashlib
import os
import re

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError

from matrix_deploy.engine import host_state, remote, stages, wants
from matrix_deploy.engine.paths import STATE
from matrix_deploy.engine.render import render
from matrix_deploy.engine.units import system_user, unit_file
from matrix_deploy.engine.wants import Directory, File
from matrix_deploy.operator import secret_table
from matrix_deploy.operator.inventory import Deployment
from matrix_deploy.services.backup import reach
from matrix_deploy.services.backup.paths import (
    BACKUP_SCRIPT,
    CACHE,
    PASSWORD_FILE,
    RESTORE_DIR,
    RESTORE_PENDING,
    RESTORE_SCRIPT,
    STAGING,
    STAMP,
    UNIT,
)
from matrix_deploy.services.postgres.databases import DATABASES
from matrix_deploy.services.synapse.paths import SYNAPSE_CONFIG, SYNAPSE_DATA, SYNAPSE_SECRETS, SYNAPSE_USER

SIGNING_KEY = f"{SYNAPSE_SECRETS}/signing.key"
MEDIA = f"{SYNAPSE_DATA}/media_store"
PACKAGES = ("restic",)
NEEDS = host_state.Needs(
    paths={f"/etc/systemd/system/{UNIT}.service": 0, f"/etc/systemd/system/{UNIT}.timer": 0, CACHE: 0},
    units=(f"{UNIT}.timer",),
)
# `matrix-deploy restore` sets these for its deploy run: the snapshot (an ID or latest) and whether a host holding
# another homeserver may be replaced.
RESTORE_ENV = "MATRIX_DEPLOY_RESTORE"
REPLACE_ENV = "MATRIX_DEPLOY_RESTORE_REPLACE"


def data_roles(d: Deployment, here: str) -> list[str]:
    """This host's roles whose data the backups hold: db (both databases), synapse (the main process's host)."""
    p = d.settings.placement
    return [r for r, holds in (("db", here == p.db), ("synapse", here == p.synapse_main)) if holds]


def paths_of(role: str) -> list[str]:
    """What a role's backup holds besides the staging directory (only what exists is backed up)."""
    return {"db": [], "synapse": [MEDIA, SIGNING_KEY]}[role]


def backup_script(d: Deployment, here: str) -> str:
    s, roles = d.settings, data_roles(d, here)
    return render(
        "backup/backup.sh.j2", server_name=s.matrix_server_name, unit=UNIT, repository=s.backup_repository,
        password_file=PASSWORD_FILE, cache=CACHE, staging=STAGING, roles=roles, postgres_port=s.postgres_port,
        paths=[p for r in roles for p in paths_of(r)], keep_daily=s.backup_keep_daily,
        keep_weekly=s.backup_keep_weekly, stamp=STAMP,
    )  # fmt: skip


def restore_script(d: Deployment, here: str) -> str:
    s, roles = d.settings, data_roles(d, here)
    parts = {r: [STAGING, *paths_of(r)] if r == "db" else [f"{STAGING}/homeserver", *paths_of(r)] for r in roles}
    return render(
        "backup/restore.sh.j2", server_name=s.matrix_server_name, repository=s.backup_repository,
        password_file=PASSWORD_FILE, cache=CACHE, state=STATE, pending=RESTORE_PENDING, restore_dir=RESTORE_DIR,
        staging=STAGING, parts=parts, signing_key=SIGNING_KEY, synapse_config=SYNAPSE_CONFIG,
        postgres_port=s.postgres_port, databases=DATABASES, synapse_user=SYNAPSE_USER, synapse_data=SYNAPSE_DATA,
        media=MEDIA,
    )  # fmt: skip


def _writable(d: Deployment) -> list[str]:
    repository = d.settings.backup_repository
    return [STATE, CACHE, *([repository] if repository.startswith("/") else [])]


_password_done: set[str] = set()


def _password(d: Deployment):
    """The repository's password file (root only), once per run and host."""
    if host.name in _password_done:
        return None
    _password_done.add(host.name)
    (row,) = secret_table.files(d.settings, "backup").values()
    return host_state.secret("restic repository password", row.path, d.secrets[row.secret] + "\n", "root", "root")


@deploy("Backups")
def install(d: Deployment, local_repository: str | None = None):
    """The backup script, its password, a oneshot unit and its daily timer, on a host with data; the repository's
    directory when it is a local one (deploy.py adds it to the host's snapshot)."""
    s, here = d.settings, host.name
    directories = [Directory("restic's cache", CACHE, "root", "root", "700")]
    if local_repository:
        directories.append(Directory("restic repository directory", local_repository, "root", "root", "700"))
    wants.apply(directories)
    _password(d)
    variables = {"server_name": s.matrix_server_name, "script": BACKUP_SCRIPT, "writable": _writable(d)}
    timer_text = render("backup/backup.timer.j2", server_name=s.matrix_server_name, time=s.backup_time)
    _, service, timer = wants.apply([
        File("Backup script", BACKUP_SCRIPT, backup_script(d, here), "root", "root", "700"),
        unit_file("Backup", f"{UNIT}.service", "backup/backup.service.j2", **variables),
        File("Backup systemd timer", f"/etc/systemd/system/{UNIT}.timer", timer_text),
    ])  # fmt: skip
    if service is not None or timer is not None:
        remote.shell(
            name="Backup timer: systemd reads the new units",
            commands=[
                f"systemctl daemon-reload && systemctl enable --quiet {UNIT}.timer && systemctl restart {UNIT}.timer"
            ],
        )
    elif not host_state.current().unit_running(f"{UNIT}.timer"):
        remote.shell(name="Backup timer enabled", commands=[f"systemctl enable --now --quiet {UNIT}.timer"])


def probes(d: Deployment) -> dict[str, str]:
    """host_state's probe of this host's view of the repository (reach.py), in the run's first look at it."""
    return {reach.PROBE: reach.probe(d.settings.backup_repository)}


def check_repository(d: Deployment) -> None:
    """Refuses (DeployError) a repository this host cannot use, before the run changes anything."""
    answer = host_state.current().probes.get(reach.PROBE, [])
    message = reach.problem(host.name, d.settings.backup_repository, answer)
    if message:
        raise DeployError(message)


SNAPSHOT = re.compile(r"^(latest|[0-9a-f]{8,64})$")


def restore_requested() -> str | None:
    """The snapshot `matrix-deploy restore` asked for (an ID or latest), or None in a plain deploy."""
    snapshot = os.environ.get(RESTORE_ENV) or None
    if snapshot is not None and not SNAPSHOT.match(snapshot):
        raise DeployError(f"{RESTORE_ENV} = {snapshot!r}: expected a restic snapshot ID (hex) or latest")
    return snapshot


def restoring(d: Deployment) -> bool:
    """A restore runs in this run on this host: asked for, or one begun and not finished (its marker)."""
    if not d.settings.backups or not data_roles(d, host.name):
        return False
    return restore_requested() is not None or host_state.current().exists(RESTORE_PENDING)


@deploy("Restore")
def restore(d: Deployment):
    """Every host: the services that use the data stop; the hosts with data put back their part of the snapshot
    (databases dropped and restored, one-time keys truncated, media); what was stopped starts again. Called on
    every host at the same place (stage barriers between the phases)."""
    here = host.name
    mine = restoring(d)
    asked = d.settings.backups and restore_requested() is not None
    uses_data = (mine or asked) and bool(d.settings.placement.roles_of(here) & {"mas", "synapse"})
    if mine:
        _password(d)
        host_state.put("Restore script", RESTORE_SCRIPT, restore_script(d, here), "root", "root", "700")
        if "synapse" in data_roles(d, here):
            system_user("Synapse", SYNAPSE_USER, SYNAPSE_DATA)  # the media's owner, on a fresh host
    snapshot = restore_requested() or ""
    replace = "1" if os.environ.get(REPLACE_ENV) == "1" else "0"
    key = hashlib.sha256(d.secrets["synapse_signing_key"].encode()).hexdigest()  # not the key: its hash
    run = f"sh {RESTORE_SCRIPT} {{}} '{snapshot}' {replace} {key}"
    if mine:
        # What must be refused is refused here, before anything changes on any host.
        remote.shell(
            name="Restore: fetch the snapshot and check it is this homeserver's", commands=[run.format("check")]
        )
    stages.done("Restore: snapshot checked")
    if uses_data:
        remote.shell(name="Restore: stop the services that use the data", commands=[_stop_services()])
    stages.done("Restore: services stopped")
    if mine:
        remote.shell(
            name=f"Restore snapshot {snapshot or '(the interrupted restore)'} of {d.settings.matrix_server_name}",
            commands=[run.format("apply")],
        )
    stages.done("Restore: data restored")
    if uses_data:
        remote.shell(name="Restore: start what was stopped", commands=[_start_services()])


STOPPED = f"{STATE}/restore-stopped"


def _stop_services() -> str:
    """Stop (and record) the units of this host that use the data: Synapse's processes and MAS."""
    return (
        f"touch {STOPPED}; for u in $(systemctl list-units --plain --no-legend --state=active 'synapse-worker@*'"
        f' synapse.service mas.service | awk \'{{print $1}}\'); do grep -qxF "$u" {STOPPED} || echo "$u" >> {STOPPED};'
        f" done; [ ! -s {STOPPED} ] || systemctl stop $(cat {STOPPED})"
    )


def _start_services() -> str:
    return f"if [ -s {STOPPED} ]; then systemctl start $(tac {STOPPED}); fi; rm -f {STOPPED}"
