"""What every host needs before its services: a working package manager and the deploy's state directory."""

from pyinfra.api import deploy
from pyinfra.operations import apt, server

from . import host_state
from .paths import STATE

# Debian packages each role needs (curl: health checks; postgresql-client: dumps before migrations).
PACKAGES = {
    "db": ["postgresql"],
    "mas": ["curl", "postgresql-client"],
    "synapse": ["python3-venv", "curl", "postgresql-client"],
    "proxy": ["nginx", "openssl", "curl"],
}
APT_RECOVER = """
for i in $(seq 600); do
    grep -qxE 'apt|apt-get|dpkg|http|https' /proc/[0-9]*/comm 2>/dev/null || break
    sleep 1
done
DEBIAN_FRONTEND=noninteractive dpkg --configure -a
"""


def packages(roles: set[str]) -> list[str]:
    return sorted({p for role in roles for p in PACKAGES[role]})


@deploy("Host base")
def prepare(roles: set[str]):
    state = host_state.current()
    if state.apt_busy:
        server.shell(name="Wait for an earlier apt run and finish what dpkg left undone", commands=[APT_RECOVER])
    host_state.directory("matrix-deploy state directory", STATE, "root", "root", "700")
    if state.apt_busy or not state.packages_installed(packages(roles)):
        apt.packages(name="Packages for this host's roles", packages=packages(roles), update=True, cache_time=3600)
