"""PostgreSQL (Debian package): a role and a database each for Synapse and MAS, scram-sha-256, local by default."""

from pyinfra.api import deploy
from pyinfra.operations import server

from matrix_deploy.engine import host_state, remote, wants
from matrix_deploy.engine.debian import POSTGRES_UNITS, RELEASES, Release, postgres_unit
from matrix_deploy.engine.firewall import Door, to
from matrix_deploy.engine.paths import STATE
from matrix_deploy.engine.render import render
from matrix_deploy.engine.units import drop_in_file
from matrix_deploy.engine.wants import File, Restart
from matrix_deploy.operator.inventory import Deployment
from matrix_deploy.services.postgres import upgrade
from matrix_deploy.services.postgres.databases import DATABASES

POSTGRES_SQL = f"{STATE}/postgres-roles.sql"  # root only; psql reads it on its standard input

# Every supported release's cluster config, drop-in and unit: the snapshot is taken before the release is known.
NEEDS = host_state.Needs(
    paths={
        **{f"/etc/postgresql/{r.postgres}/main": 2 for r in RELEASES.values()},
        **{f"/etc/systemd/system/{postgres_unit(r.postgres)}.service.d": 1 for r in RELEASES.values()},
    },
    packages=("postgresql",),
    units=POSTGRES_UNITS,
    # The record of an older release's cluster upgraded (upgrade.py) is in the state directory, base's need.
)


def roles_sql(d: Deployment) -> str:
    """Idempotent SQL that creates (or updates the passwords of) the roles and databases."""
    lines = ["\\set ON_ERROR_STOP on", "SET password_encryption = 'scram-sha-256';"]
    for name, extra in DATABASES.items():
        password = d.secrets[f"{name}_db_password"]
        quoted = password.replace("'", "''")
        lines += [
            f"SELECT 'CREATE ROLE {name} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') \\gexec",
            f"ALTER ROLE {name} LOGIN PASSWORD '{quoted}';",
            f"SELECT $$CREATE DATABASE {name} OWNER {name} {extra}$$"
            f" WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{name}') \\gexec",
        ]
    return "\n".join(lines) + "\n"


def doors(s, here: str) -> list[Door]:
    """The database host's door: PostgreSQL, for the MAS and Synapse hosts."""
    p = s.placement
    return to("PostgreSQL", [s.postgres_port], [*p.mas, *p.synapse], here) if here == p.db else []


def hba_clients(d: Deployment, resolve=None) -> list[str]:
    """Networks allowed to log in over TCP: loopback, plus the MAS and Synapse hosts when remote.

    `resolve` gives a host's addresses as the database host resolves its internal address.
    """
    p = d.settings.placement
    return ["127.0.0.1/32", "::1/128"] + p.networks(
        [h for h in dict.fromkeys((*p.mas, *p.synapse)) if h != p.db], resolve
    )


def wanted(
    d: Deployment, release: Release, own_addresses, resolve, extra_hba=()
) -> tuple[list[File], Restart, File, Restart]:
    """The cluster's config and sandboxing with the restart they call for, then its client authentication with the
    reload it calls for (a reload keeps the connections MAS and Synapse hold: a restart would fail their next
    queries, one per pooled connection).

    `own_addresses` and `resolve`: the database host's addresses and name lookup (host_state's snapshot)."""
    s, p = d.settings, d.settings.placement
    unit, conf_dir = postgres_unit(release.postgres), f"/etc/postgresql/{release.postgres}/main"
    listen = p.listen(p.db, [*p.mas, *p.synapse], own_addresses)
    files = [
        File("PostgreSQL listens where MAS and Synapse reach it", f"{conf_dir}/conf.d/matrix-deploy.conf",
             render("postgres/matrix-deploy.conf.j2", listen=listen, port=s.postgres_port), "postgres", "postgres", "644"),
        # Only what a cluster run by its owner needs: no capabilities, no privileged system calls.
        drop_in_file("PostgreSQL", f"{unit}.service", "postgres/hardening.conf.j2", denied_syscalls="@privileged"),
    ]  # fmt: skip
    hba = File("PostgreSQL client authentication (scram-sha-256)", f"{conf_dir}/pg_hba.conf",
               render("postgres/pg_hba.conf.j2", clients=hba_clients(d, resolve), extra=list(extra_hba)), "postgres", "postgres", "640")  # fmt: skip
    ready = f"cd / && runuser -u postgres -- pg_isready -q -p {s.postgres_port}"
    return files, Restart("postgres", unit, ready), hba, Restart("postgres-hba", unit, ready)


@deploy("PostgreSQL")
def install(d: Deployment, release: Release, clients: list[tuple[str, str]] = (), extra_hba=()):
    """`clients`: (restart marker, unit) of each service on this host that uses the database (what an upgrade of
    the cluster stops), in the order they start; `extra_hba`: pg_hba.conf lines besides the deployment's own."""
    s, state = d.settings, host_state.current()
    unit = postgres_unit(release.postgres)
    # First: an older release's cluster upgraded into this release's, whose files are then written below.
    upgraded = upgrade.upgrade(d, release, list(clients))
    files, restart, hba, reload = wanted(d, release, state.bind_address, state.resolve, extra_hba)
    # Every file first, so that a restart already starts with the client authentication wanted.
    changed, hba_changed = wants.apply(files), wants.apply([hba])
    wants.restart(restart, [upgraded, *changed])
    # Also after a restart (both due): a reload then is harmless; a stopped cluster starts.
    wants.restart(reload, hba_changed, action="reload-or-restart")
    if not state.unit_running(unit):
        server.service(name="PostgreSQL is running", service=unit, running=True, enabled=True)
    # Root only; psql (as postgres) reads it on its standard input, opened by root.
    sql = host_state.secret("Roles and databases for Synapse and MAS", POSTGRES_SQL, roles_sql(d), "root", "root")
    if sql is not None:
        remote.shell(
            name="Create or update the roles and databases",
            # A failed run removes the file, so the next run uploads and runs it again.
            commands=[
                f"cd / && runuser -u postgres -- psql -X -q -p {s.postgres_port} -f - < {POSTGRES_SQL}"
                f" || {{ rm -f {POSTGRES_SQL}; exit 1; }}"
            ],
            _if=sql.did_change,
        )
