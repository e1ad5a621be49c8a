"""Which secret files each host has: one table of conditions, for MAS, Synapse and the deploy's own.

Every row names a file, the store entry it holds, who owns it and when it exists. A file whose
condition does not hold is removed from the host (a stale file is never left behind), and the secrets
store is asked for exactly the entries some row needs (`wanted_secrets`).
"""

from collections.abc import Callable
from dataclasses import dataclass

from matrix_deploy.engine.paths import STATE
from matrix_deploy.operator.settings import Settings
from matrix_deploy.services.mas.paths import MAS_SECRETS, MAS_USER
from matrix_deploy.services.synapse.paths import SYNAPSE_SECRETS, SYNAPSE_USER

# Secrets that are no file's content but are needed all the same (PostgreSQL's roles).
ROLE_PASSWORDS = ("mas_db_password", "synapse_db_password")


def _always(s: Settings) -> bool:
    return True


def _msc3861(s: Settings) -> bool:
    return s.auth_mode == "msc3861"


def _admin(s: Settings) -> bool:
    return bool(s.admin_user)


def _smtp_login(s: Settings) -> bool:
    return bool(s.mas_email and s.mas_email.username)


def _workers(s: Settings) -> bool:
    return s.has_workers


def _backups(s: Settings) -> bool:
    return s.backups


def _never(s: Settings) -> bool:
    return False


@dataclass(frozen=True)
class SecretFile:
    role: str  # which deploy step writes it: mas, synapse, mas-admin or backup (the deploy's own, root only)
    path: str
    secret: str | None  # the store entry it holds (None: a file of an older layout, only ever removed)
    when: Callable[[Settings], bool]
    owner: str = "root"


TABLE = (
    # MAS: /etc/mas/secrets, readable by MAS only.
    SecretFile("mas", f"{MAS_SECRETS}/matrix_secret", "matrix_shared_secret", _always, MAS_USER),
    SecretFile("mas", f"{MAS_SECRETS}/database_password", "mas_db_password", _always, MAS_USER),
    SecretFile("mas", f"{MAS_SECRETS}/encryption_key", "mas_encryption_key", _always, MAS_USER),
    SecretFile("mas", f"{MAS_SECRETS}/signing_rsa.pem", "mas_signing_key_rsa", _always, MAS_USER),
    SecretFile("mas", f"{MAS_SECRETS}/signing_ec.pem", "mas_signing_key_ec", _always, MAS_USER),
    # msc3861 only: the secret of MAS's client for Synapse (clients[].client_secret_file).
    SecretFile("mas", f"{MAS_SECRETS}/synapse_client_secret", "msc3861_client_secret", _msc3861, MAS_USER),
    # admin_user only: the secret of the admin API client (clients[].client_secret_file).
    SecretFile("mas", f"{MAS_SECRETS}/admin_client_secret", "mas_admin_client_secret", _admin, MAS_USER),
    # SMTP with a login: email.password_file.
    SecretFile("mas", f"{MAS_SECRETS}/smtp_password", "mas_smtp_password", _smtp_login, MAS_USER),
    # Synapse: /etc/synapse/secrets, readable by Synapse only.
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/signing.key", "synapse_signing_key", _always, SYNAPSE_USER),
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/macaroon_secret_key", "synapse_macaroon_secret_key", _always, SYNAPSE_USER),
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/form_secret", "synapse_form_secret", _always, SYNAPSE_USER),
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/mas_secret", "matrix_shared_secret", _always, SYNAPSE_USER),
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/pgpass", "synapse_db_password", _always, SYNAPSE_USER),
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/mas_client_secret", "msc3861_client_secret", _msc3861, SYNAPSE_USER),
    # Workers only: Redis's password (redis.password_path) and the replication secret between processes.
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/redis_password", "redis_password", _workers, SYNAPSE_USER),
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/worker_replication_secret", "synapse_worker_replication_secret",
               _workers, SYNAPSE_USER),
    # The deploy's own credentials for MAS's admin API: root only, in the deploy's 0700 state directory
    # (not in /etc/mas/secrets, which the mas group can traverse).
    SecretFile("mas-admin", f"{STATE}/mas-admin-api.curl", "mas_admin_client_secret", _admin),
    SecretFile("mas-admin", f"{STATE}/mas-admin-password.json", "admin_password", _admin),
    # Scheduled backups: the restic repository's password (RESTIC_PASSWORD_FILE), root only, on each host with data.
    SecretFile("backup", f"{STATE}/backup-password", "backup_password", _backups),
    # Where older releases of this deploy put them: removed.
    SecretFile("mas-admin", f"{MAS_SECRETS}/admin_api.curl", None, _never),
    SecretFile("mas-admin", f"{MAS_SECRETS}/admin_password.json", None, _never),
)  # fmt: skip


def upstream_secret_entry(provider_id: str) -> str:
    """The store entry holding an upstream provider's client secret."""
    return f"mas_upstream_client_secret_{provider_id}"


def upstream_secret_path(provider_id: str) -> str:
    return f"{MAS_SECRETS}/upstream_{provider_id}_client_secret"


UPSTREAM_PREFIX, UPSTREAM_SUFFIX = f"{MAS_SECRETS}/upstream_", "_client_secret"


def files(s: Settings, role: str) -> dict[str, SecretFile]:
    """The secret files a host of `role` has with these settings: path -> row."""
    wanted = {row.path: row for row in TABLE if row.role == role and row.when(s)}
    if role == "mas":
        for provider in s.mas_upstream_providers:
            if provider.needs_secret:
                path = upstream_secret_path(provider.id)
                wanted[path] = SecretFile("mas", path, upstream_secret_entry(provider.id), _always, MAS_USER)
    return wanted


def stale(s: Settings, role: str, present: list[str]) -> list[str]:
    """Secret files of `role` that must not be on the host: table rows whose condition does not hold, and
    upstream provider secrets (among the `present` paths) of providers no longer configured."""
    wanted = files(s, role)
    out = [row.path for row in TABLE if row.role == role and row.path not in wanted]
    if role == "mas":
        out += [p for p in present if p.startswith(UPSTREAM_PREFIX) and p.endswith(UPSTREAM_SUFFIX) and p not in wanted]
    return sorted(set(out))


def wanted_secrets(s: Settings) -> list[str]:
    """Every store entry this deployment needs, in a stable order."""
    needed = set(ROLE_PASSWORDS)
    for role in ("mas", "synapse", "mas-admin", "backup"):
        needed |= {row.secret for row in files(s, role).values() if row.secret}
    return sorted(needed)
