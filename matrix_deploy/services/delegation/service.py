"""Which delegation mode a host is in (native or msc3861), recorded on the host, and the move between them.

The record keeps a run with stale settings from silently moving a migrated host back to msc3861:
that needs `allow_auth_mode_downgrade`.
"""

from pyinfra import host
from pyinfra.api.exceptions import DeployError

from matrix_deploy.engine import host_state
from matrix_deploy.engine.paths import STATE
from matrix_deploy.operator.inventory import Deployment
from matrix_deploy.services.delegation.options import AUTH_MODES

RECORD = f"{STATE}/auth-mode"


def recorded() -> str | None:
    entry = host_state.current().entry(RECORD)
    return next((m for m in AUTH_MODES if entry and entry.sha1 == host_state.sha1(m + "\n")), None)


def check(d: Deployment) -> None:
    """Refuse, before any change, to take a host recorded as native back to msc3861 unless allowed."""
    was, wanted = recorded(), d.settings.auth_mode
    if was == "native" and wanted == "msc3861" and not d.settings.allow_auth_mode_downgrade:
        raise DeployError(
            f"{host.name} was migrated to auth_mode 'native'; these settings ask for 'msc3861'. Going back puts "
            "experimental_features.msc3861 and MAS's client for Synapse back, and needs a Synapse <= 1.156.0 whose "
            "database was never migrated by a newer one (restore the dump taken before the upgrade). If that is what "
            "you want, set allow_auth_mode_downgrade = True; otherwise fix auth_mode."
        )


def migrating_to_native(d: Deployment) -> bool:
    return recorded() == "msc3861" and d.settings.auth_mode == "native"


def record(d: Deployment):
    return host_state.put(f"Record auth mode {d.settings.auth_mode}", RECORD, d.settings.auth_mode + "\n", mode="600")
