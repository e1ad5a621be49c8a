"""The whole stack, in order: the host firewall, PostgreSQL, MAS, (an adoption,) Synapse, nginx, then the optional
admin user.

pyinfra orders each host's operations as written, but interleaves different hosts' operations by
their position in each host's list. A stage barrier (an operation every host runs at the same line,
which sends no command) closes each stage, so in a split layout the database host is done (and
healthy) before MAS is touched, MAS before Synapse, Synapse before nginx.
"""

from pyinfra import host
from pyinfra.api.exceptions import DeployError

from matrix_deploy.engine import debian as platform
from matrix_deploy.engine import host_state
from matrix_deploy.engine.stages import done
from matrix_deploy.operator.inventory import current
from matrix_deploy.services import roles as services
from matrix_deploy.services.adoption import service as adoption
from matrix_deploy.services.backup import service as backup
from matrix_deploy.services.base import service as base
from matrix_deploy.services.delegation import service as auth_mode
from matrix_deploy.services.firewall import service as firewall
from matrix_deploy.services.mas import service as mas
from matrix_deploy.services.nginx import service as nginx
from matrix_deploy.services.postgres import service as postgres
from matrix_deploy.services.synapse import service as synapse

deployment = current()
settings = deployment.settings
roles = settings.placement.roles_of(host.name)


def deploy_host() -> None:
    """This host's part of the deployment, stage by stage."""
    redis = settings.has_workers and host.name == settings.placement.synapse_main  # Redis beside the main process
    backup_here = settings.backups and bool(backup.data_roles(deployment, host.name))  # restic, on hosts with data
    local_repository = (
        settings.backup_repository if backup_here and settings.backup_repository.startswith("/") else None
    )

    # One look at the host (after taking its run lock); operations are only added for what is not already as wanted.
    extra_paths = {local_repository: 0} if local_repository else {}
    if "synapse" in roles:
        extra_paths |= synapse.virtualenv_needs(settings.synapse_version)
    state = host_state.read(
        services.snapshot_needs(roles, settings.tls, redis, settings.firewall, backup_here, extra_paths),
        apt_busy=base.APT_BUSY,
        resolve=[
            *(a for h, a in settings.placement.addresses.items() if settings.placement.roles_of(h)),
            *firewall.names(settings),
        ],
        probes=backup.probes(deployment) if backup_here else None,
    )
    release = platform.release(*state.os)
    if release is None:
        raise DeployError(
            f"{host.name} runs {' '.join(state.os).strip() or 'an unknown system'} (from /etc/os-release); "
            f"matrix-deploy supports {platform.SUPPORTED}. Nothing on it was changed."
        )
    if backup_here:
        backup.check_repository(deployment)  # reachable and usable from here, before anything changes
    # A Synapse to adopt: read (its secrets into the store) and refused if it cannot be, before anything changes.
    old_homeserver = adoption.read(deployment)
    if roles & {"mas", "synapse"}:
        auth_mode.check(deployment)
    base.prepare(
        roles,
        services.packages(roles, settings.tls, redis, settings.firewall, backup_here),
        (lambda: synapse.build_virtualenv(settings.synapse_version, release.python)) if "synapse" in roles else None,
    )
    done("Host base")
    # Before any service listens on an internal address: each port only ever open to the hosts that need it.
    firewall.install(deployment, host.name, services.doors(settings, host.name))
    done("Firewall")
    if "db" in roles:
        postgres.install(
            deployment, release, services.database_clients(settings, host.name),
            adoption.hba_lines(deployment, old_homeserver, host.name),
        )  # fmt: skip
    done("PostgreSQL")
    if settings.backups:
        # Only with `matrix-deploy restore` (or a restore a dead run began): the data, before MAS and Synapse start.
        backup.restore(deployment)
    if "mas" in roles:
        mas.install(deployment, hold=not adoption.imported(old_homeserver))  # not before syn2mas has imported
    done("MAS")
    if old_homeserver is not None and old_homeserver.record != "delegated":  # once delegated, no stage at all
        adoption.adopt(deployment, old_homeserver)
        mas.start_held(deployment)  # the instances install() held, now that syn2mas has imported
        done("Adoption")
    if "synapse" in roles:
        synapse.install(deployment, release)
    done("Synapse")
    adoption.finish(deployment, old_homeserver)
    if "proxy" in roles:
        nginx.install(deployment, release)
    done("nginx")
    if host.name == settings.placement.mas_primary and settings.admin_user:
        mas.admin_user(deployment)
    if backup_here:
        backup.install(deployment, local_repository)


if roles:
    deploy_host()
else:
    # The old Synapse's host of an adoption across hosts (the only host with no role the settings allow): only
    # read here; the adoption stage on the database host stops the old Synapse and relays its database and media.
    adoption.read(deployment)
