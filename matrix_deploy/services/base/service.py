"""What every host needs before its services: a working package manager, the deploy's state directory, and
the packages its roles' modules declare (each role's NEEDS)."""

import shlex

from pyinfra.api import deploy

from matrix_deploy.engine import host_state, remote
from matrix_deploy.engine.paths import STATE

NEEDS = host_state.Needs(paths={STATE: 2})
# grep arguments that match the processes of an apt or dpkg run (apt's http/https fetchers included).
APT_PROCESSES = "-xE 'apt|apt-get|dpkg|http|https' /proc/[0-9]*/comm"
# Debian's hook that lets an administrator forbid service starts from package scripts (invoke-rc.d,
# deb-systemd-invoke). Ours is only in place while the apt run that installs PostgreSQL lasts.
POLICY_RC = "/usr/sbin/policy-rc.d"
POLICY_RC_MARK = "# matrix-deploy: PostgreSQL starts once its configuration is in place"
POLICY_RC_SCRIPT = f'#!/bin/sh\n{POLICY_RC_MARK}\ncase "$1" in postgresql*) exit 101;; esac\nexit 0\n'
VENV_PACKAGES = ["python3-venv"]  # what Synapse's virtualenv needs before it can start building
APT_UPDATED = "/var/lib/apt/periodic/update-success-stamp"  # where pyinfra's apt.update(cache_time) looks too
OURS_LEFT = f"grep -qxF {shlex.quote(POLICY_RC_MARK)} {POLICY_RC} 2>/dev/null"
# Prints something when apt or dpkg still runs (a killed deploy's, the host's own upgrades), dpkg left work
# undone, or our policy-rc.d outlived its apt run (the host went down during it).
APT_BUSY = (
    f"grep -l {APT_PROCESSES} 2>/dev/null | head -1; ls -A /var/lib/dpkg/updates | head -1;"
    f" if {OURS_LEFT}; then echo policy; fi"
)
APT_RECOVER = f"""
for i in $(seq 600); do
    grep -q {APT_PROCESSES} 2>/dev/null || break
    sleep 1
done
DEBIAN_FRONTEND=noninteractive dpkg --configure -a
if {OURS_LEFT}; then rm -f {POLICY_RC}; fi
"""


def install_script(wanted: list[str], hold_postgres: bool) -> str:
    """One apt transaction for `wanted`. With `hold_postgres`, PostgreSQL's package creates its cluster but does
    not start it: Debian would start it before the PostgreSQL stage puts its configuration and sandboxing in
    place, which then costs a restart. An administrator's own policy-rc.d is left alone (and obeyed)."""
    hold = ""
    if hold_postgres:
        hold = f"""
if [ ! -e {POLICY_RC} ] || {OURS_LEFT}; then
    trap 'rm -f {POLICY_RC}' EXIT
    trap 'rm -f {POLICY_RC}; exit 1' HUP INT TERM
    printf %s {shlex.quote(POLICY_RC_SCRIPT)} > {POLICY_RC}.matrix-deploy
    chmod 755 {POLICY_RC}.matrix-deploy
    mv -f {POLICY_RC}.matrix-deploy {POLICY_RC}
fi"""
    options = "-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
    return f"""
set -e
export DEBIAN_FRONTEND=noninteractive{hold}
# apt's lists are refreshed unless this deploy refreshed them in the last hour (Debian keeps no such stamp itself).
if [ -z "$(find {APT_UPDATED} -mmin -60 2>/dev/null)" ]; then
    apt-get update -q >/dev/null
    install -d /var/lib/apt/periodic && touch {APT_UPDATED}
fi
apt-get install {options} {" ".join(wanted)} >/dev/null
"""


@deploy("Host base")
def prepare(roles: set[str], wanted: list[str], start_in_background=None):
    """`wanted`: the Debian packages of the host's roles (services.roles.packages). `start_in_background`: on a
    Synapse host, what starts building Synapse's virtualenv here, in the background (after python3-venv, before
    the other packages), while the later stages run; the Synapse stage waits for it."""
    state = host_state.current()
    if state.apt_busy:
        remote.shell(name="Wait for an earlier apt run and finish what dpkg left undone", commands=[APT_RECOVER])
    host_state.directory("matrix-deploy state directory", STATE, "root", "root", "700")
    missing = state.apt_busy or not state.packages_installed(wanted)
    if start_in_background:
        if missing and not state.packages_installed(VENV_PACKAGES):
            remote.shell(
                name="Python's venv, for Synapse's virtualenv", commands=[install_script(VENV_PACKAGES, False)]
            )
        start_in_background()
    if missing:
        # Held back only where the package is new: an installed cluster restarted by an upgrade must come back.
        hold = "postgresql" in wanted and not state.packages_installed(["postgresql"])
        remote.shell(name="Packages for this host's roles", commands=[install_script(wanted, hold)])
