"""Checks an inventory before pyinfra connects to any host.

pyinfra connects to every host right after loading the inventory, before it runs deploy.py, so
the settings are checked here: each inventory ends with `check(__file__)`, which builds the
inventory the way pyinfra does (inventory + group_data), validates the settings, loads the
secrets store, and exits with every problem listed when something is wrong.
"""

import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from pyinfra.api import State
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import make_inventory_from_files

from matrix_deploy.operator import secret_table
from matrix_deploy.operator import store as secrets_store
from matrix_deploy.operator.settings import ROLES, Settings, SettingsError, load
from matrix_deploy.services.adoption import options as adoption_options

_loading = False
LOGIN_KEYS = ("ssh_user", "ssh_port", "ssh_key", "ssh_known_hosts_file", "ssh_strict_host_key_checking", "_sudo")
_current: "Deployment | None" = None


@dataclass(frozen=True)
class Deployment:
    inventory: Path
    settings: Settings
    secrets: secrets_store.Secrets
    secrets_file: Path
    # How the operator's machine reaches each host (the inventory's ssh_hostname, else its name): verify's doors.
    connect: dict[str, str] = field(default_factory=dict, hash=False)
    # And how it logs in (the inventory's ssh_* settings and _sudo): verify runs MAS's doctor on the MAS hosts
    # and reads the backups' age on the hosts with data.
    logins: dict[str, dict] = field(default_factory=dict, hash=False)


def wanted_secrets(settings: Settings) -> list[str]:
    """The store entries this deployment needs: those its hosts' secret files hold (secret_table.py)."""
    return secret_table.wanted_secrets(settings)


def build(inventory_file: str | Path, cwd: str | None = None) -> Deployment:
    """Load, check and return the deployment an inventory describes; raise SettingsError if it is wrong."""
    global _loading
    inventory_file = Path(inventory_file).resolve()
    _loading = True  # the inventory file runs again inside; its own check() call must not recurse
    try:
        # Outside the pyinfra CLI (tests, `lab welcome`) there is no pyinfra state to load files in.
        with nullcontext() if ctx_state.isset() else ctx_state.use(State()):
            inventory = make_inventory_from_files(str(inventory_file), cwd=cwd or os.getcwd())
    finally:
        _loading = False
    hosts = {host.name: host.data.dict() for host in inventory}
    groups = {role: [h.name for h in inventory.get_group(role, [])] for role in ROLES}
    settings = load(hosts, groups)
    identity = settings.secrets_age_identity
    store = secrets_store.store_path(settings.secrets_dir, inventory_file, encrypted=identity is not None)
    connect = {name: data.get("ssh_hostname") or name for name, data in hosts.items()}
    adoptable = adoption_options.client_secrets(settings).values()
    secrets = secrets_store.load(store, wanted_secrets(settings), identity, adoptable)
    logins = {
        name: {k: v for k, v in data.items() if k in LOGIN_KEYS and v is not None} for name, data in hosts.items()
    }
    return Deployment(inventory_file, settings, secrets, store, connect, logins)


def check(inventory_file: str) -> None:
    """Call at the end of an inventory file. Exits the pyinfra run, before any connection, on bad settings."""
    global _current
    if _loading:
        return
    try:
        _current = build(inventory_file)
    except SettingsError as error:
        print(
            f"matrix-deploy: {Path(inventory_file).name}: the settings have problems, no host was contacted:",
            file=sys.stderr,
        )
        print(error, file=sys.stderr)
        raise SystemExit(2) from None


def current() -> Deployment:
    if _current is None:
        raise RuntimeError(
            "deploy.py needs an inventory that ends with matrix_deploy.operator.inventory.check(__file__)"
        )
    return _current
