"""MAS's secret files: /etc/mas/secrets, readable by MAS only, and the deploy's own credentials for its admin API."""

from matrix_deploy.engine.paths import STATE
from matrix_deploy.operator.declare import SecretFile, always, never
from matrix_deploy.services.delegation.options import msc3861
from matrix_deploy.services.mas.paths import MAS_SECRETS, MAS_USER


def _admin(s) -> bool:
    return bool(s.admin_user)


def _smtp_login(s) -> bool:
    return bool(s.mas_email and s.mas_email.username)


def _adopting(s) -> bool:
    return s.adopt_synapse is not None


PEPPER = f"{MAS_SECRETS}/synapse_password_pepper"
SECRET_FILES = (
    SecretFile("mas", f"{MAS_SECRETS}/matrix_secret", "matrix_shared_secret", always, MAS_USER),
    SecretFile("mas", f"{MAS_SECRETS}/database_password", "mas_db_password", always, MAS_USER),
    SecretFile("mas", f"{MAS_SECRETS}/encryption_key", "mas_encryption_key", always, MAS_USER),
    SecretFile("mas", f"{MAS_SECRETS}/signing_rsa.pem", "mas_signing_key_rsa", always, MAS_USER),
    SecretFile("mas", f"{MAS_SECRETS}/signing_ec.pem", "mas_signing_key_ec", always, MAS_USER),
    # msc3861 only: the secret of MAS's client for Synapse (clients[].client_secret_file).
    SecretFile("mas", f"{MAS_SECRETS}/synapse_client_secret", "msc3861_client_secret", msc3861, MAS_USER),
    # admin_user only: the secret of the admin API client (clients[].client_secret_file).
    SecretFile("mas", f"{MAS_SECRETS}/admin_client_secret", "mas_admin_client_secret", _admin, MAS_USER),
    # An adopted Synapse's password pepper: passwords.schemes[0].secret_file (its users' bcrypt hashes), from the
    # adoption on, for as long as the store holds it (also once adopt_synapse is gone: the way back given up).
    SecretFile("mas", PEPPER, "synapse_password_pepper", _adopting, MAS_USER, while_stored=True),
    # SMTP with a login: email.password_file.
    SecretFile("mas", f"{MAS_SECRETS}/smtp_password", "mas_smtp_password", _smtp_login, MAS_USER),
    # The deploy's own credentials for MAS's admin API: root only, in the deploy's 0700 state directory
    # (not in /etc/mas/secrets, which the mas group can traverse).
    SecretFile("mas-admin", f"{STATE}/mas-admin-api.curl", "mas_admin_client_secret", _admin),
    SecretFile("mas-admin", f"{STATE}/mas-admin-password.json", "admin_password", _admin),
    # Where older releases of this deploy put them: removed.
    SecretFile("mas-admin", f"{MAS_SECRETS}/admin_api.curl", None, never),
    SecretFile("mas-admin", f"{MAS_SECRETS}/admin_password.json", None, never),
)  # fmt: skip

UPSTREAM_PREFIX, UPSTREAM_SUFFIX = f"{MAS_SECRETS}/upstream_", "_client_secret"


def upstream_secret_entry(provider_id: str) -> str:
    """The store entry holding an upstream provider's client secret."""
    return f"mas_upstream_client_secret_{provider_id}"


def upstream_secret_path(provider_id: str) -> str:
    return f"{UPSTREAM_PREFIX}{provider_id}{UPSTREAM_SUFFIX}"


def upstream_files(s) -> list[SecretFile]:
    """One file per upstream provider that has a client secret: rows that follow the settings' providers."""
    return [
        SecretFile("mas", upstream_secret_path(p.id), upstream_secret_entry(p.id), always, MAS_USER)
        for p in s.mas_upstream_providers
        if p.needs_secret
    ]


def is_upstream_file(path: str) -> bool:
    return path.startswith(UPSTREAM_PREFIX) and path.endswith(UPSTREAM_SUFFIX)
