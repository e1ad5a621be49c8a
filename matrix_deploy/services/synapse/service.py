"""Synapse from PyPI in a per-version virtualenv, delegating authentication to MAS."""

import shlex
from functools import partial

from pyinfra import host
from pyinfra.api import deploy

from matrix_deploy.engine import host_state, pending, remote, stages, wants
from matrix_deploy.engine.config_files import install_checked
from matrix_deploy.engine.debian import Release
from matrix_deploy.engine.firewall import Door, to
from matrix_deploy.engine.paths import STATE
from matrix_deploy.engine.render import render
from matrix_deploy.engine.units import unit
from matrix_deploy.engine.wants import Absent, Directory, File, OnlyIn, SystemUser, Want
from matrix_deploy.engine.yaml_config import deep_merge, dump
from matrix_deploy.operator import secret_table
from matrix_deploy.operator.inventory import Deployment
from matrix_deploy.services.delegation import service as auth_mode
from matrix_deploy.services.delegation.options import MSC3861_CLIENT_ID
from matrix_deploy.services.postgres.dumps import dump_before_migration
from matrix_deploy.services.redis import service as redis
from matrix_deploy.services.synapse import locks
from matrix_deploy.services.synapse import workers as synapse_workers
from matrix_deploy.services.synapse.paths import (
    SYNAPSE_CONFIG,
    SYNAPSE_CURRENT,
    SYNAPSE_DATA,
    SYNAPSE_ETC,
    SYNAPSE_FEDERATION_CA,
    SYNAPSE_HOME,
    SYNAPSE_SECRETS,
    SYNAPSE_USER,
)

# What this role reads through the host's snapshot (curl: health checks; postgresql-client: dumps before migrations).
NEEDS = host_state.Needs(
    paths={
        SYNAPSE_HOME: 2,
        SYNAPSE_ETC: 2,
        SYNAPSE_DATA: 0,
        "/etc/systemd/system/synapse.service": 0,
        "/etc/systemd/system/synapse-worker@.service": 0,
    },  # fmt: skip
    users=(SYNAPSE_USER,),
    packages=("python3-venv", "curl", "postgresql-client"),
)


def doors(s, here: str) -> list[Door]:
    """A Synapse host's doors: the main process's listener for the proxies, MAS and the workers (replication);
    this host's workers' listeners for the proxies and the other Synapse processes; every metrics port for the
    scrapers."""
    p = s.placement
    if here not in p.synapse:
        return []
    ws = [w for w in synapse_workers.workers(s) if w.host == here]
    found, metrics = [], [w.metrics_port for w in ws]
    if here == p.synapse_main:
        found += to("Synapse", [s.synapse_port], [*p.proxy, *p.mas, *p.synapse], here)
        metrics.insert(0, s.synapse_metrics_port)
    if ws:
        found += to("Synapse's workers", [w.port for w in ws], [*p.proxy, *p.synapse], here)
    if metrics:
        found.append(Door("Synapse's metrics", tuple(metrics), scrapers=True))
    return found


def secret_contents(d: Deployment, here: str | None = None) -> dict[str, str]:
    """Files in /etc/synapse/secrets the Synapse host `here` (default: the main process's) has and what they hold."""
    s, p = d.settings, d.settings.placement
    db_host = p.reach(here or p.synapse_main, p.db).replace("\\", "\\\\").replace(":", "\\:")  # pgpass escapes : and \
    wanted = secret_table.files(s, "synapse")
    contents = {
        "signing.key": d.secrets["synapse_signing_key"],
        "macaroon_secret_key": d.secrets["synapse_macaroon_secret_key"] + "\n",
        "form_secret": d.secrets["synapse_form_secret"] + "\n",
        "mas_secret": d.secrets["matrix_shared_secret"] + "\n",
        # libpq's password file: host:port:database:user:password
        "pgpass": f"{db_host}:{s.postgres_port}:synapse:synapse:{d.secrets['synapse_db_password']}\n",
    }
    if f"{SYNAPSE_SECRETS}/mas_client_secret" in wanted:
        contents["mas_client_secret"] = d.secrets["msc3861_client_secret"] + "\n"
    if s.has_workers:
        contents["redis_password"] = d.secrets["redis_password"] + "\n"
        contents["worker_replication_secret"] = d.secrets["synapse_worker_replication_secret"] + "\n"
    assert set(wanted) == {f"{SYNAPSE_SECRETS}/{name}" for name in contents}, "secret_table.py and Synapse disagree"
    return contents


def config(d: Deployment, here: str | None = None, own_addresses=None) -> dict:
    """homeserver.yaml of the Synapse host `here` (default: the main process's): MAS delegation, PostgreSQL,
    the main process's listeners (none on a host of workers only), secrets by path.

    `own_addresses`: this host's addresses for its internal address (host_state.bind_address).
    """
    s, p = d.settings, d.settings.placement
    here = here or p.synapse_main
    ws = synapse_workers.workers(s)
    # The main process is asked by MAS, the proxies and the other hosts' workers (replication).
    bind = p.listen(here, [*p.mas, *p.proxy, *p.synapse], own_addresses) if here == p.synapse_main else None
    base = {
        "server_name": s.matrix_server_name,
        "public_baseurl": s.matrix_public_url,
        "report_stats": False,
        "listeners": [
            {
                "port": s.synapse_port,
                "bind_addresses": bind,
                "type": "http",
                "tls": False,
                "x_forwarded": True,
                # Workers ask the main process over replication (authenticated by the replication secret).
                "resources": [{"names": ["client", "federation", *(["replication"] if ws else [])], "compress": False}],
            },
            # Prometheus, on the internal addresses only: nginx never proxies it.
            {"port": s.synapse_metrics_port, "type": "metrics", "bind_addresses": list(bind)},
        ]
        if bind
        else [],
        "enable_metrics": True,
        "database": {
            "name": "psycopg2",
            "args": {
                "user": "synapse",
                "dbname": "synapse",
                "host": p.reach(here, p.db),
                "port": s.postgres_port,
                "passfile": f"{SYNAPSE_SECRETS}/pgpass",
                "cp_min": 5,
                "cp_max": 10,
            },
        },
        "log_config": f"{SYNAPSE_ETC}/log.yaml",
        "media_store_path": f"{SYNAPSE_DATA}/media_store",
        "signing_key_path": f"{SYNAPSE_SECRETS}/signing.key",
        "macaroon_secret_key_path": f"{SYNAPSE_SECRETS}/macaroon_secret_key",
        "form_secret_path": f"{SYNAPSE_SECRETS}/form_secret",
        "trusted_key_servers": [{"server_name": "matrix.org"}],
        "suppress_key_server_warning": True,
        # Implied by delegation on recent Synapse; older ones need it said.
        "password_config": {"enabled": False},
    }
    base |= delegation(s, f"http://{p.endpoint(here, p.mas_for(here), s.mas_port)}/")
    if ws:
        base |= synapse_workers.shared_config(
            ws, partial(p.reach, here), p.synapse_main, s.synapse_port, s.redis_port, SYNAPSE_SECRETS
        )
    if s.synapse_federation_ca_certificates:
        base["federation_custom_ca_list"] = [path for path, _ in federation_cas(d)]
    return deep_merge(base, s.synapse_extra_config)


def delegation(s, mas_internal: str) -> dict:
    """homeserver.yaml's part that hands authentication to MAS (at `mas_internal`), in the settings' auth_mode."""
    if s.auth_mode == "native":
        return {
            "matrix_authentication_service": {
                "enabled": True,
                "endpoint": mas_internal,
                "secret_path": f"{SYNAPSE_SECRETS}/mas_secret",
            }
        }
    return {
        "experimental_features": {
            "msc3861": {
                "enabled": True,
                "issuer": s.mas_public_url,
                # Given here, Synapse never fetches MAS's metadata from the public issuer URL (msc3861_delegated.py
                # `_load_metadata`). Synapse publishes it as given at auth_metadata, so it holds public values only:
                # clients get MAS's full document from MAS itself (nginx routes auth_metadata there).
                "issuer_metadata": {
                    "issuer": s.mas_public_url,
                    "account_management_uri": f"{s.mas_public_url}account/",
                },
                # Introspection at MAS's internal address (`_introspection_endpoint` prefers this option).
                "introspection_endpoint": f"{mas_internal}oauth2/introspect",
                "client_id": MSC3861_CLIENT_ID,
                "client_auth_method": "client_secret_basic",
                "client_secret_path": f"{SYNAPSE_SECRETS}/mas_client_secret",
                # The msc3861 admin token is MAS's matrix.secret: the same shared secret as native mode's.
                "admin_token_path": f"{SYNAPSE_SECRETS}/mas_secret",
                "account_management_url": f"{s.mas_public_url}account/",
            }
        }
    }


def federation_cas(d: Deployment) -> list[tuple[str, str]]:
    """(path on the host, content) of each CA certificate Synapse trusts for federation."""
    return [
        (f"{SYNAPSE_FEDERATION_CA}/ca-{i}.pem", path.read_text())
        for i, path in enumerate(d.settings.synapse_federation_ca_certificates, 1)
    ]


def render_config(d: Deployment, here: str | None = None, own_addresses=None) -> str:
    return dump(config(d, here, own_addresses))


# Its user, and the directories every Synapse host has.
HOME = [
    SystemUser("Synapse", SYNAPSE_USER, SYNAPSE_DATA),
    Directory("Synapse home", SYNAPSE_HOME, "root", "root", "755"),
    Directory("Synapse data", SYNAPSE_DATA, SYNAPSE_USER, SYNAPSE_USER, "750"),
    Directory("Synapse config directory", SYNAPSE_ETC, "root", SYNAPSE_USER, "750"),
    Directory("Synapse secrets directory", SYNAPSE_SECRETS, "root", SYNAPSE_USER, "750"),
]


def wanted_files(d: Deployment, here: str) -> list[Want]:
    """What every Synapse process on `here` reads besides homeserver.yaml: its secrets (and no stale one), the
    federation CAs (and no other), the log config."""
    s = d.settings
    out: list[Want] = [
        File(f"Synapse secret {name}", f"{SYNAPSE_SECRETS}/{name}", content, SYNAPSE_USER, SYNAPSE_USER, "400",
             secret=True)
        for name, content in secret_contents(d, here).items()
    ]  # fmt: skip
    cas = dict(federation_cas(d))
    if cas:
        out.append(Directory("Synapse federation CAs", SYNAPSE_FEDERATION_CA, "root", SYNAPSE_USER, "750"))
    out += [File("Synapse federation CA", path, content, "root", SYNAPSE_USER, "640") for path, content in cas.items()]
    out.append(OnlyIn("No stale federation CA {path}", SYNAPSE_FEDERATION_CA, frozenset(cas)))
    out += [
        Absent(f"No stale Synapse secret {path.rsplit('/', 1)[1]}", path)
        for path in secret_table.stale(s, "synapse", [])
    ]
    out.append(File("Synapse log config", f"{SYNAPSE_ETC}/log.yaml", render("synapse/log.yaml.j2", level="INFO"),
                    "root", SYNAPSE_USER, "640"))  # fmt: skip
    return out


# Synapse's virtualenv builds in the background (build_virtualenv): its lock and its output.
VIRTUALENV_LOCK = f"{STATE}/synapse-virtualenv.lock"
VIRTUALENV_LOG = f"{STATE}/synapse-virtualenv.log"


def virtualenv_needs(version: str) -> dict[str, int]:
    """The snapshot's view of the virtualenv's Python: its lib/pythonX.Y directory (needs: path -> depth)."""
    return {f"{SYNAPSE_HOME}/{version}/lib": 1}


def _virtualenv_files(version: str, python: str) -> tuple[str, str, str, str]:
    """(virtualenv, lock file on the host, the lock's text, a shell test that the virtualenv is built from it for
    the host's `python`)."""
    venv, lock_text = f"{SYNAPSE_HOME}/{version}", locks.path(version).read_text()
    # .complete holds the lock's digest: a regenerated lock rebuilds the virtualenv. A virtualenv of another
    # Python (Debian 12's 3.11 on a host upgraded in place to 13's 3.13) cannot run: rebuilt too.
    complete = (
        f'[ "$(cat {venv}/.complete 2>/dev/null)" = {host_state.sha1(lock_text)} ] && [ -d {venv}/lib/python{python} ]'
    )
    return venv, f"{SYNAPSE_HOME}/{version}.lock", lock_text, complete


def _virtualenv_due(version: str, python: str) -> bool:
    venv, lock_file, lock_text, _ = _virtualenv_files(version, python)
    state = host_state.current()
    return not (
        state.is_file(lock_file, lock_text, "root", "root", "644")
        and state.is_file(f"{venv}/.complete", host_state.sha1(lock_text) + "\n")
        and state.is_dir(f"{venv}/lib/python{python}")
    )


def build_virtualenv(version: str, python: str):
    """Start installing Synapse into /opt/synapse/<version> from its lock, in the background, once python3-venv is
    there (base.prepare): it builds while the other packages install and the PostgreSQL and MAS stages run, and
    _virtualenv waits for it. A half-done or outdated install is redone; a dead run's build is waited for first.

    Beside the running version: the current link moves to it only at the restart (pending.restart's switch).
    """
    if not _virtualenv_due(version, python):
        return None
    venv, lock_file, lock_text, complete = _virtualenv_files(version, python)
    host_state.put(f"Synapse {version} lock", lock_file, lock_text, "root", "root", "644")
    build = (
        f"rm -rf {venv} && python3 -m venv {venv}"
        f" && {venv}/bin/pip install --quiet --disable-pip-version-check --no-deps --require-hashes"
        f" --only-binary :all: -r {lock_file}"
        f" && printf '%s\\n' {host_state.sha1(lock_text)} > {venv}/.complete"
    )
    return remote.start(f"Start installing Synapse {version} into {venv} (in the background)", build,
                        VIRTUALENV_LOCK, VIRTUALENV_LOG, complete)  # fmt: skip


def _virtualenv(version: str, python: str):
    """Wait for the build build_virtualenv started in the Host base stage; fails with pip's output if it failed."""
    if not _virtualenv_due(version, python):
        return None
    venv, _, _, complete = _virtualenv_files(version, python)
    return remote.wait(f"Synapse {version} installed into {venv}", VIRTUALENV_LOCK, VIRTUALENV_LOG, complete,
                       f"Installing Synapse {version} into {venv} (started in the Host base stage)")  # fmt: skip


@deploy("Synapse")
def install(d: Deployment, release: Release):
    """On the first Synapse host the main process, then its workers; on the others their workers. The main
    process restarts first, then every worker in turn across hosts (stages.in_turn), each healthy first."""
    s, p, here = d.settings, d.settings.placement, host.name
    main = here == p.synapse_main
    wants.apply(HOME)
    venv = f"{SYNAPSE_HOME}/{s.synapse_version}"
    installed = _virtualenv(s.synapse_version, release.python)
    # A version to switch to is a restart due before anything else happens: a run that dies before the
    # restart still switches and restarts next time.
    switch = None
    if not host_state.current().is_link(SYNAPSE_CURRENT, venv):
        switch = pending.mark_now("synapse", f"switches to Synapse {s.synapse_version}")
    changes = [installed, switch, *wants.apply(wanted_files(d, here))]
    changes.append(
        install_checked(
            SYNAPSE_CONFIG,
            render_config(d, here, host_state.current().bind_address),
            check=f"runuser -u {SYNAPSE_USER} -- {venv}/bin/python -m synapse.config -c {SYNAPSE_CONFIG}",
            user="root",
            group=SYNAPSE_USER,
            mode="640",
            service="Synapse",
            secrets=d.secrets.values.values(),
            recheck=list(changes),
        )
    )
    if main and s.has_workers:
        # Redis with its password before any Synapse process that wants it (re)starts.
        changes += redis.install(d)
    shared = list(changes)  # what every Synapse process reads, workers included
    if main:
        changes.append(
            unit(
                "Synapse",
                "synapse.service",
                "synapse/synapse.service.j2",
                service_user=SYNAPSE_USER,
                current=SYNAPSE_CURRENT,
                config=SYNAPSE_CONFIG,
                data=SYNAPSE_DATA,
            )
        )
        marked = [switch, pending.mark("synapse", changes)]
        # Synapse migrates its database when it starts on a new version: dumped while the old version serves.
        dump_before_migration(
            d,
            "synapse",
            "synapse",
            p.reach(here, p.db),
            f"PGPASSFILE={SYNAPSE_SECRETS}/pgpass",
            [installed],
            switch is not None,
        )
        # The old version serves until here: the stop and the new version's start are the only downtime.
        pending.restart("synapse", "synapse", f"curl -fsS http://127.0.0.1:{s.synapse_port}/health", marked,
                         switch=(SYNAPSE_CURRENT, venv))  # fmt: skip
    stages.done("Synapse's main process")
    if not main and switch is not None:
        # Workers only: the new version's link once the main process runs it (and has migrated the database).
        pending.switch("synapse", SYNAPSE_CURRENT, venv)
    # Then the workers, one at a time across hosts, each healthy before the next: the others keep serving.
    _workers(d, shared, venv)
    auth_mode.record(d)


def _workers(d: Deployment, shared: list, venv: str) -> None:
    """This host's workers' configs and units (run from `venv`'s Synapse), restarted in turn with every other
    host's, and no unit or config of a worker no longer wanted here."""
    s, p, state = d.settings, d.settings.placement, host_state.current()
    every = synapse_workers.workers(s)
    ws = [w for w in every if w.host == host.name]
    wanted = {w.name for w in ws}
    # Asked by the proxies, the main process and the other hosts' workers (replication).
    bind = p.listen(host.name, [*p.proxy, *p.synapse], state.bind_address)
    for path in state.below(synapse_workers.WORKERS_DIR):
        name = path.rsplit("/", 1)[1].removesuffix(".yaml")
        if path.endswith(".yaml") and name not in wanted:
            remote.shell(
                name=f"No Synapse worker {name}",
                commands=[f"systemctl disable --now --quiet {shlex.quote(f'synapse-worker@{name}')} || true",
                          f"rm -f {shlex.quote(path)} {shlex.quote(path)}.candidate",
                          pending.clear(f"synapse-worker-{name}")],
            )  # fmt: skip
    if not ws:
        return
    host_state.directory("Synapse workers' configs", synapse_workers.WORKERS_DIR, "root", SYNAPSE_USER, "750")
    template = unit(
        "Synapse worker", "synapse-worker@.service", "synapse/worker.service.j2", service_user=SYNAPSE_USER,
        current=SYNAPSE_CURRENT, config=SYNAPSE_CONFIG, workers=synapse_workers.WORKERS_DIR, data=SYNAPSE_DATA,
    )  # fmt: skip
    for w in stages.in_turn("Synapse worker", every, lambda w: w.host):
        config = install_checked(
            w.config_path,
            dump(synapse_workers.worker_config(w, bind, f"{SYNAPSE_ETC}/log.yaml")),
            check=f"runuser -u {SYNAPSE_USER} -- {venv}/bin/python -m synapse.config -c {SYNAPSE_CONFIG} -c {w.config_path}",
            user="root", group=SYNAPSE_USER, mode="640", service=f"Synapse worker {w.name}", recheck=list(shared),
        )  # fmt: skip
        marked = pending.mark(f"synapse-worker-{w.name}", [*shared, template, config])
        pending.restart(f"synapse-worker-{w.name}", w.unit, f"curl -fsS http://127.0.0.1:{w.port}/health", marked)
