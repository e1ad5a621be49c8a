"""Which delegation mode a host is in (native or msc3861), recorded on the host, and the move between them.

The record keeps a run with stale settings from silently moving a migrated host back to msc3861:
that needs `allow_auth_mode_downgrade`.
"""

from io import StringIO

from pyinfra import host
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import FileContents
from pyinfra.operations import files

from .inventory import Deployment
from .paths import STATE

RECORD = f"{STATE}/auth-mode"


def recorded() -> str | None:
    lines = host.get_fact(FileContents, path=RECORD)
    return lines[0].strip() if lines else None


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
    return files.put(
        name=f"Record auth mode {d.settings.auth_mode}",
        src=StringIO(d.settings.auth_mode + "\n"),
        dest=RECORD,
        mode="600",
    )
