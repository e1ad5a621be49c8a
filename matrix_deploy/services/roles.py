"""Which service runs for each role, and what a host with some roles needs: the one place that knows every
service (deploy.py composes the stages from it; services never import each other through it)."""

from matrix_deploy.engine import host_state
from matrix_deploy.engine.firewall import Door
from matrix_deploy.services.backup import service as backup
from matrix_deploy.services.base import service as base
from matrix_deploy.services.firewall import service as firewall
from matrix_deploy.services.mas import service as mas
from matrix_deploy.services.nginx import service as nginx
from matrix_deploy.services.postgres import service as postgres
from matrix_deploy.services.redis import service as redis
from matrix_deploy.services.synapse import service as synapse
from matrix_deploy.services.synapse import workers as synapse_workers

ROLE_MODULES = {"db": postgres, "mas": mas, "synapse": synapse, "proxy": nginx}


def packages(
    roles: set[str],
    tls: str = "self-signed",
    redis_here: bool = False,
    firewall_on: bool = False,
    backup_here: bool = False,
) -> list[str]:
    """The Debian packages of `roles`; an ACME proxy also gets certbot, the main Synapse host with workers Redis,
    every host nftables when the firewall is on, a host with data restic when backups are set."""
    extra = set(nginx.ACME_PACKAGES) if "proxy" in roles and tls == "acme" else set()
    extra |= set(redis.NEEDS.packages) if redis_here else set()
    extra |= set(firewall.NEEDS.packages) if firewall_on else set()
    extra |= set(backup.PACKAGES) if backup_here else set()
    return sorted({p for role in roles for p in ROLE_MODULES[role].NEEDS.packages} | extra)


def snapshot_needs(
    roles: set[str],
    tls: str,
    redis_here: bool = False,
    firewall_on: bool = False,
    backup_here: bool = False,
    extra_paths=None,
) -> host_state.Needs:
    """What the snapshot reads on a host with `roles`: its roles' packages, and every role's paths, users and
    units (the same on every host, as before roles declared them); `extra_paths` (path -> depth) besides."""
    every = [base.NEEDS, *(m.NEEDS for m in ROLE_MODULES.values()), redis.NEEDS, firewall.NEEDS, backup.NEEDS]
    return host_state.Needs(
        paths={**{path: depth for n in every for path, depth in n.paths.items()}, **(extra_paths or {})},
        users=tuple(dict.fromkeys(user for n in every for user in n.users)),
        packages=tuple(packages(roles, tls, redis_here, firewall_on, backup_here)),
        units=tuple(dict.fromkeys(unit for n in every for unit in n.units)),
    )


def database_clients(settings, here: str) -> list[tuple[str, str]]:
    """(restart marker, unit) of each service on host `here` that uses the database, in the order they start: what
    an upgrade of the cluster there stops, and their stages start again."""
    p = settings.placement
    found = [("mas", "mas")] if here in p.mas else []
    found += [("synapse", "synapse")] if here == p.synapse_main else []
    return found + [(f"synapse-worker-{w.name}", w.unit) for w in synapse_workers.workers(settings) if w.host == here]


def doors(settings, here: str) -> list[Door]:
    """Every door the services of host `here` need in its firewall (each service's `doors`), SSH's and the
    operator's own first."""
    return [
        *firewall.doors(settings, here),
        *(d for m in (postgres, mas, synapse, redis, nginx) for d in m.doors(settings, here)),
    ]
