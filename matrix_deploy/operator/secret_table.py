"""Which secret files each host has: one table of the services' declared secret files (each service's
`secret_files.py`).

Every row names a file, the store entry it holds, who owns it and when it exists. A file whose
condition does not hold is removed from the host (a stale file is never left behind), and the secrets
store is asked for exactly the entries some row needs (`wanted_secrets`).
"""

from collections.abc import Collection

from matrix_deploy.operator.declare import SecretFile
from matrix_deploy.operator.settings import Settings
from matrix_deploy.services.backup import secret_files as backup
from matrix_deploy.services.mas import secret_files as mas
from matrix_deploy.services.synapse import secret_files as synapse

# Secrets that are no file's content but are needed all the same (PostgreSQL's roles).
ROLE_PASSWORDS = ("mas_db_password", "synapse_db_password")

TABLE: tuple[SecretFile, ...] = (*mas.SECRET_FILES, *synapse.SECRET_FILES, *backup.SECRET_FILES)


def files(s: Settings, role: str, stored: Collection[str] = ()) -> dict[str, SecretFile]:
    """The secret files a host of `role` has with these settings and the store's entries (`stored`): path -> row."""
    rows = [*TABLE, *mas.upstream_files(s)]
    return {
        row.path: row
        for row in rows
        if row.role == role and (row.when(s) or (row.while_stored and row.secret in stored))
    }


def stale(s: Settings, role: str, present: list[str], stored: Collection[str] = ()) -> list[str]:
    """Secret files of `role` that must not be on the host: table rows whose condition does not hold, and
    upstream provider secrets (among the `present` paths) of providers no longer configured."""
    wanted = files(s, role, stored)
    out = [row.path for row in TABLE if row.role == role and row.path not in wanted]
    if role == "mas":
        out += [p for p in present if mas.is_upstream_file(p) and p not in wanted]
    return sorted(set(out))


def wanted_secrets(s: Settings) -> list[str]:
    """Every store entry this deployment needs, in a stable order."""
    needed = set(ROLE_PASSWORDS)
    for role in ("mas", "synapse", "mas-admin", "backup"):
        needed |= {row.secret for row in files(s, role).values() if row.secret}
    return sorted(needed)
