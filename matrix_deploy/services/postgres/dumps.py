"""A PostgreSQL dump before anything that may migrate a database (a new MAS release or Synapse version).

The dump is due as soon as the new release is in place and is recorded as pending work (pending.py), like a
restart, so a run that dies before dumping still dumps before the service starts on the new release.
"""

from matrix_deploy.engine import pending, remote
from matrix_deploy.operator.inventory import Deployment


def dump_before_migration(
    d: Deployment, service: str, database: str, db_host: str, credentials: str, changes: list, switching: bool = False
):
    """Dump `database` into the backup directory when any of `changes` changed, or always when `switching` (the
    host's snapshot shows a version switch is due); keep the newest few.

    `credentials` is a shell prefix that sets PGPASSFILE or PGPASSWORD from a file, never a value.
    """
    s = d.settings
    directory = s.backup_dir
    due = "needs a database dump"
    marked = (
        pending.mark_now(f"{service}-backup", due) if switching else pending.mark(f"{service}-backup", changes, due)
    )
    condition = pending.due(f"{service}-backup", marked)
    if condition is None:
        return None
    return remote.shell(
        name=f"Dump the {database} database before {service} migrates it",
        commands=[
            f"""
set -e
install -d -m 700 {directory}
target={directory}/{database}-$(date -u +%Y%m%dT%H%M%SZ).dump
{credentials} pg_dump --format=custom --host={db_host} --port={s.postgres_port} --username={database} \\
    --file="$target.partial" {database}
mv "$target.partial" "$target"
ls -1t {directory}/{database}-*.dump | tail -n +{s.backup_keep + 1} | xargs -r rm -f
{pending.clear(f"{service}-backup")}
"""
        ],
        _if=condition,
    )
