"""What every host needs before its services: a working package manager, the deploy's state directory, and
the packages its roles' modules declare (each role's NEEDS)."""

from pyinfra.api import deploy
from pyinfra.operations import apt

from . import host_state, mas, nginx, postgres, redis, remote, synapse
from .paths import STATE

ROLE_MODULES = {"db": postgres, "mas": mas, "synapse": synapse, "proxy": nginx}
NEEDS = host_state.Needs(paths={STATE: 2})
# grep arguments that match the processes of an apt or dpkg run (apt's http/https fetchers included).
APT_PROCESSES = "-xE 'apt|apt-get|dpkg|http|https' /proc/[0-9]*/comm"
# Prints something when apt or dpkg still runs (a killed deploy's, the host's own upgrades) or dpkg left work undone.
APT_BUSY = f"grep -l {APT_PROCESSES} 2>/dev/null | head -1; ls -A /var/lib/dpkg/updates | head -1"
APT_RECOVER = f"""
for i in $(seq 600); do
    grep -q {APT_PROCESSES} 2>/dev/null || break
    sleep 1
done
DEBIAN_FRONTEND=noninteractive dpkg --configure -a
"""


def packages(roles: set[str], tls: str = "self-signed", workers: bool = False) -> list[str]:
    """The Debian packages of `roles`; an ACME proxy also gets certbot, a Synapse host with workers Redis."""
    extra = set(nginx.ACME_PACKAGES) if "proxy" in roles and tls == "acme" else set()
    extra |= set(redis.NEEDS.packages) if "synapse" in roles and workers else set()
    return sorted({p for role in roles for p in ROLE_MODULES[role].NEEDS.packages} | extra)


def snapshot_needs(roles: set[str], tls: str, workers: bool = False) -> host_state.Needs:
    """What the snapshot reads on a host with `roles`: its roles' packages, and every role's paths, users and
    units (the same on every host, as before roles declared them)."""
    every = [NEEDS, *(m.NEEDS for m in ROLE_MODULES.values()), redis.NEEDS]
    return host_state.Needs(
        paths={path: depth for n in every for path, depth in n.paths.items()},
        users=tuple(dict.fromkeys(user for n in every for user in n.users)),
        packages=tuple(packages(roles, tls, workers)),
        units=tuple(dict.fromkeys(unit for n in every for unit in n.units)),
    )


@deploy("Host base")
def prepare(roles: set[str], tls: str, workers: bool):
    state = host_state.current()
    if state.apt_busy:
        remote.shell(name="Wait for an earlier apt run and finish what dpkg left undone", commands=[APT_RECOVER])
    host_state.directory("matrix-deploy state directory", STATE, "root", "root", "700")
    wanted = packages(roles, tls, workers)
    if state.apt_busy or not state.packages_installed(wanted):
        apt.packages(name="Packages for this host's roles", packages=wanted, update=True, cache_time=3600)
