"""PostgreSQL across Debian releases: a Debian 12 host upgraded in place to 13 keeps PostgreSQL 15's cluster (the
data) and gets 17's packages (trixie's postinst makes no 17/main beside an existing cluster; one made by hand
would be empty, on the next free port). The deploy upgrades the data into 17/main with Debian's `pg_upgradecluster`
and keeps the old cluster, stopped, as the way back.

The snapshot decides: an older release's cluster config (`/etc/postgresql/15/main/postgresql.conf`) without the
record of its upgrade (`/var/lib/matrix-deploy/postgres-upgraded-15`) is an upgrade due. One command does it, under
the work lock, resumable after a kill at any point:

1. a new-version cluster beside the old one is dropped only when it is empty (no database but
   template0, template1 and postgres) or the half-done one of our own killed upgrade (its `-begun` record); one
   holding databases stops the run, nothing changed;
2. MAS and Synapse on this host stop (their restart markers written first: their own stages start them again,
   in the usual order, also after a kill);
3. a `pg_dumpall` of the old cluster into `backup_dir`;
4. our `conf.d` file leaves the old cluster (its port would override the ports pg_upgradecluster gives each
   cluster), then `pg_upgradecluster -m dump`: the old cluster serves only its owner meanwhile, and ends stopped,
   `manual` in `start.conf`, on another port; the new one gets the old one's port. Dump and restore rebuild every
   index under the new release's C library (its collations may sort differently), and never touch the old
   cluster's files;
5. the record. The PostgreSQL stage then renders its files for the new cluster and restarts it.
"""

import shlex

from matrix_deploy.engine import host_state, pending, remote
from matrix_deploy.engine.debian import Release, older_postgres, postgres_unit
from matrix_deploy.engine.paths import STATE
from matrix_deploy.operator.inventory import Deployment


def record(old: int) -> str:
    """Written once the data of `old`'s cluster serves from the new one."""
    return f"{STATE}/postgres-upgraded-{old}"


def begun(old: int) -> str:
    """Written right before pg_upgradecluster starts: a new cluster found with it is our own, half done."""
    return f"{STATE}/postgres-upgrade-{old}-begun"


def due(release: Release) -> int | None:
    """The older PostgreSQL version whose cluster this host still has to upgrade (the snapshot's view), if any."""
    state = host_state.current()
    for old in older_postgres(release):
        if state.exists(f"/etc/postgresql/{old}/main/postgresql.conf") and not state.exists(record(old)):
            return old
    return None


def script(d: Deployment, old: int, new: int, clients: list[tuple[str, str]]) -> str:
    """The upgrade's shell; `clients`: (restart marker, unit) of each service on this host that uses the
    database, in the order they start."""
    conf, q = f"/etc/postgresql/{old}/main", shlex.quote
    markers = " ".join(f"{pending.MARKERS}/{q(marker)}" for marker, _ in clients)
    units = " ".join(q(unit) for _, unit in reversed(clients))
    stop = (
        f"mkdir -p {pending.MARKERS} && touch {markers}\n"
        # A unit not there (yet) is nothing to stop; while the upgrade runs the old cluster refuses them anyway.
        f"    systemctl stop {units} 2>/dev/null || true"
        if clients
        else ":"
    )
    directory = d.settings.backup_dir
    return f"""
set -e
cd /
# pg_upgradecluster's last steps: the old cluster set to start by hand, beside the new one.
finished() {{ grep -qx manual {conf}/start.conf 2>/dev/null && [ -d /etc/postgresql/{new}/main ]; }}
if ! finished; then
    if [ -d /etc/postgresql/{new}/main ]; then
        if [ ! -e {begun(old)} ]; then
            data=$(pg_conftool -s {new} main show data_directory 2>/dev/null || echo /var/lib/postgresql/{new}/main)
            # A fresh cluster holds template0, template1 and postgres: one directory each in base/.
            if [ "$(ls "$data/base" 2>/dev/null | wc -l)" -gt 3 ]; then
                echo "PostgreSQL {new}/main holds databases beside {old}/main, which still serves this homeserver;" \\
                     "nothing was changed. Keep the one that holds the homeserver's data: to upgrade {old}/main into" \\
                     "{new}, drop the other (pg_dropcluster --stop {new} main) and run the deploy again." >&2
                exit 1
            fi
        fi
        pg_dropcluster --stop {new} main
    fi
    {stop}
    if [ -e {begun(old)} ]; then
        # Our killed upgrade's instance of the old cluster, started outside systemd with its restricted pg_hba.
        pg_ctlcluster {old} main stop -m fast 2>/dev/null || true
    fi
    systemctl start {postgres_unit(old)}
    install -d -m 700 {directory}
    target={directory}/postgresql-{old}-main-$(date -u +%Y%m%dT%H%M%SZ).sql
    (umask 077 && runuser -u postgres -- pg_dumpall --cluster {old}/main > "$target.partial")
    mv "$target.partial" "$target"
    rm -f {conf}/conf.d/matrix-deploy.conf
    touch {begun(old)}
    # Without the work lock's descriptor (flock's, inherited): the clusters pg_upgradecluster starts outside systemd
    # would hold the lock for as long as they run, also after a kill.
    pg_upgradecluster -v {new} -m dump {old} main 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-
fi
rm -f {conf}/conf.d/matrix-deploy.conf
touch {record(old)}
rm -f {begun(old)}
"""


def upgrade(d: Deployment, release: Release, clients: list[tuple[str, str]]):
    """The upgrade's operation when the snapshot shows one due (None otherwise); what it stops is made due to
    start in its own stage."""
    old = due(release)
    if old is None:
        return None
    operation = remote.shell(
        name=f"Upgrade PostgreSQL {old}'s cluster to {release.postgres} (dumped first, the old one kept stopped)",
        commands=[script(d, old, release.postgres, clients)],
    )
    for marker, _ in clients:
        pending.made_due(marker, operation)
    # Its files are replaced wholesale: the new cluster's config is written whatever the snapshot saw there.
    host_state.current().forget(f"/etc/postgresql/{release.postgres}/main")
    return operation
