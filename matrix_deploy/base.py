"""What every host needs before its services: a working package manager and the deploy's state directory."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server

from .paths import STATE

# Debian packages each role needs (curl: health checks; postgresql-client: dumps before migrations).
PACKAGES = {
    "db": ["postgresql"],
    "mas": ["curl", "postgresql-client"],
    "synapse": ["python3-venv", "curl", "postgresql-client"],
    "proxy": ["nginx", "openssl", "curl"],
}
# An apt or dpkg still running (its deploy was killed, the host's own upgrades), or dpkg left half-done.
APT_BUSY = "grep -lxE 'apt|apt-get|dpkg|http|https' /proc/[0-9]*/comm 2>/dev/null | head -1; ls -A /var/lib/dpkg/updates | head -1"
APT_RECOVER = """
for i in $(seq 600); do
    grep -qxE 'apt|apt-get|dpkg|http|https' /proc/[0-9]*/comm 2>/dev/null || break
    sleep 1
done
DEBIAN_FRONTEND=noninteractive dpkg --configure -a
"""


@deploy("Host base")
def prepare(roles: set[str]):
    if host.get_fact(Command, APT_BUSY):
        server.shell(name="Wait for an earlier apt run and finish what dpkg left undone", commands=[APT_RECOVER])
    files.directory(name="matrix-deploy state directory", path=STATE, user="root", group="root", mode="700")
    apt.packages(
        name="Packages for this host's roles",
        packages=sorted({p for role in roles for p in PACKAGES[role]}),
        update=True,
        cache_time=3600,
    )
