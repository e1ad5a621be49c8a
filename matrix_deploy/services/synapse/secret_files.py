"""Synapse's secret files: /etc/synapse/secrets, readable by Synapse only."""

from matrix_deploy.operator.declare import SecretFile, always
from matrix_deploy.services.delegation.options import msc3861
from matrix_deploy.services.synapse.paths import SYNAPSE_SECRETS, SYNAPSE_USER


def _workers(s) -> bool:
    return s.has_workers


SECRET_FILES = (
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/signing.key", "synapse_signing_key", always, SYNAPSE_USER),
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/macaroon_secret_key", "synapse_macaroon_secret_key", always, SYNAPSE_USER),
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/form_secret", "synapse_form_secret", always, SYNAPSE_USER),
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/mas_secret", "matrix_shared_secret", always, SYNAPSE_USER),
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/pgpass", "synapse_db_password", always, SYNAPSE_USER),
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/mas_client_secret", "msc3861_client_secret", msc3861, SYNAPSE_USER),
    # Workers only: Redis's password (redis.password_path) and the replication secret between processes.
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/redis_password", "redis_password", _workers, SYNAPSE_USER),
    SecretFile("synapse", f"{SYNAPSE_SECRETS}/worker_replication_secret", "synapse_worker_replication_secret",
               _workers, SYNAPSE_USER),
)  # fmt: skip
