"""Every setting, declared once, each by the part it belongs to: the deployment's own (here) and each service's
(`matrix_deploy/services/<service>/options.py`), each with its name, default, one-line meaning and check
(`declare.Option`, as a NixOS option is).

- `settings.load()` runs each option's check; checks that involve several settings are in
  `settings.together()`.
- `group_data/all.py` takes the defaults from here: pyinfra's data for every host, which inventories override.
- The README's settings table is made from here by `make docs` (`python -m matrix_deploy.operator.options --readme`);
  a test fails when the README is behind.

Adding a setting: an `Option` in its service's OPTIONS, a `Settings` field of the same name in the same place
(operator/settings.py), then `make docs`. A new service's OPTIONS joins the list below.
"""

import sys
from pathlib import Path
from typing import Any

from matrix_deploy.operator.declare import (
    HOSTNAME,
    Option,
    age_identity,
    directory,
    https_url,
    internal_address,
    text,
)
from matrix_deploy.services.adoption import options as adoption
from matrix_deploy.services.backup import options as backup
from matrix_deploy.services.delegation import options as delegation
from matrix_deploy.services.firewall import options as firewall
from matrix_deploy.services.mas import options as mas
from matrix_deploy.services.nginx import options as nginx
from matrix_deploy.services.postgres import options as postgres
from matrix_deploy.services.redis import options as redis
from matrix_deploy.services.synapse import options as synapse

# The deployment's names, before every service's settings.
NAMES = (
    Option(
        "matrix_server_name", None, "the homeserver's name, the part after `:` in user IDs",
        text(HOSTNAME, "a DNS name like example.org (lower case, no scheme, no port)"), shown="(required)",
    ),
    Option(
        "matrix_public_url", None, "public URL of the client and federation APIs (nginx)",
        https_url, shown="`https://matrix.<server name>/`",
    ),
    Option(
        "mas_public_url", None, "public URL of MAS: OIDC issuer and login pages; a host name of its own",
        https_url, shown="`https://auth.<server name>/`",
    ),
)  # fmt: skip
# Where the operator keeps the secrets store, and how each host is reached by the others.
OPERATOR = (
    Option("secrets_dir", ".secrets", "directory of the secrets store on the operator's machine", directory),
    Option(
        "secrets_age_identity", None,
        "your age identity file on the operator's machine: the store is kept encrypted as `<inventory>.yaml.age` "
        "(see Secrets)",
        age_identity, shown="unset (or `$MATRIX_DEPLOY_AGE_IDENTITY`)",
    ),
    Option(
        "internal_address", None,
        "address other hosts of the deployment use to reach this one: an IPv4 or IPv6 address, or a name every "
        "host resolves (DNS or `/etc/hosts`); on its own host it must resolve to one of that host's addresses "
        "(Debian's installer maps the host name to 127.0.1.1: use another name or the address). Where a program "
        "needs addresses (services' binds, MAS's `trusted_proxies`, `pg_hba.conf`) a name is resolved on the host "
        "that uses it, as /32 or /128 networks",
        internal_address, shown="the host's inventory name", per_host=True,
    ),
)  # fmt: skip
OPTIONS = (
    *NAMES,
    *delegation.OPTIONS,
    *synapse.OPTIONS,
    *redis.OPTIONS,
    *mas.OPTIONS,
    *postgres.OPTIONS,
    *nginx.OPTIONS,
    *firewall.OPTIONS,
    *backup.OPTIONS,
    *adoption.OPTIONS,
    *OPERATOR,
)
BY_NAME = {option.name: option for option in OPTIONS}
# Settings that are gone, and why: an inventory that still sets one is told what to do instead.
REMOVED = {
    "mas_health_port": "renamed mas_internal_port (that listener also serves MAS's admin API)",
    "postgres_version": "PostgreSQL's version follows each host's Debian release (15 on Debian 12, 17 on 13)",
}
# Names that look like settings: one of these prefixes that is no setting is reported as a likely typo.
PREFIXES = (
    "redis_",
    "acme_",
    "matrix_",
    "mas_",
    "synapse_",
    "postgres_",
    "tls_",
    "admin_",
    "auth_",
    "secrets_",
    "backup_",
    "firewall_",
    "adopt_",
)


def defaults() -> dict[str, Any]:
    """Every setting's default (fresh copies: hosts must not share a mutable default)."""
    return {o.name: type(o.default)(o.default) if isinstance(o.default, (dict, list)) else o.default for o in OPTIONS}


README = Path(__file__).resolve().parents[2] / "README.md"
TABLE_START = "<!-- the settings table: made from matrix_deploy/operator/options.py by `make docs` -->"
TABLE_END = "<!-- end of the settings table -->"


def _shown(option: Option) -> str:
    if option.shown:
        return option.shown
    if option.default is None:
        return "unset"
    return f"`{option.default if isinstance(option.default, str) else repr(option.default)}`"


def readme_table() -> str:
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for o in OPTIONS:
        rows.append(f"| `{o.name}`{' (per host)' if o.per_host else ''} | {_shown(o)} | {o.meaning} |")
    return "\n".join(rows)


def with_table(readme: str) -> str:
    """`readme` with its settings table (between the markers) made from OPTIONS."""
    before, rest = readme.split(TABLE_START + "\n", 1)
    after = rest.split(TABLE_END, 1)[1]
    return f"{before}{TABLE_START}\n{readme_table()}\n{TABLE_END}{after}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--readme"]:
        raise SystemExit(
            "usage: python -m matrix_deploy.operator.options --readme  (rewrites README.md's settings table)"
        )
    README.write_text(with_table(README.read_text()))
