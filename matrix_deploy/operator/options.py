"""Every setting, declared once: its name, default, one-line meaning and check (as a NixOS option is).

- `settings.load()` runs each option's check; checks that involve several settings are in
  `settings.together()`.
- `group_data/all.py` takes the defaults from here: pyinfra's data for every host, which inventories override.
- The README's settings table is made from here by `make docs` (`python -m matrix_deploy.operator.options --readme`);
  a test fails when the README is behind.

Adding a setting: an `Option` in OPTIONS, a `Settings` field of the same name, then `make docs`.
"""

import ipaddress
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from matrix_deploy.services.mas import options as mas_settings

AUTH_MODES = ("native", "msc3861")
TLS_MODES = ("acme", "files", "self-signed")
HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Settings Synapse refuses beside MAS, or that this deployment renders itself.
SYNAPSE_FORBIDDEN = {
    "enable_registration": "registration is handled by MAS",
    "enable_registration_without_verification": "registration is handled by MAS",
    "registration_requires_3pid": "registration is handled by MAS",
    "password_config": "passwords are handled by MAS",
    "enable_3pid_changes": "3PID changes are handled by MAS",
    "enable_registration_captcha": "captcha is handled by MAS",
    "recaptcha_public_key": "captcha is handled by MAS",
    "recaptcha_private_key": "captcha is handled by MAS",
    "user_consent": "Synapse refuses user_consent beside MAS",
    "oidc_providers": "SSO is configured in MAS (upstream_oauth2)",
    "oidc_config": "SSO is configured in MAS (upstream_oauth2)",
    "saml2_config": "SSO is configured in MAS",
    "cas_config": "SSO is configured in MAS",
    "jwt_config": "SSO is configured in MAS",
    "sso": "SSO is configured in MAS",
    "password_providers": "authentication is handled by MAS",
    "login_via_existing_session": "Synapse refuses it beside MAS",
    "session_lifetime": "token lifetimes are handled by MAS",
    "refresh_access_token_lifetime": "token lifetimes are handled by MAS",
    "refreshable_access_token_lifetime": "token lifetimes are handled by MAS",
    "nonrefreshable_access_token_lifetime": "token lifetimes are handled by MAS",
    "experimental_features": "msc3861 is chosen with the auth_mode setting",
    "matrix_authentication_service": "it is rendered from the MAS settings",
    "server_name": "set matrix_server_name instead",
    "public_baseurl": "set matrix_public_url instead",
    "database": "the database is managed by this deployment",
    "listeners": "set synapse_port instead",
    "signing_key_path": "the signing key comes from the secrets store",
    "macaroon_secret_key": "it comes from the secrets store",
    "form_secret": "it comes from the secrets store",
    "macaroon_secret_key_path": "it comes from the secrets store",
    "form_secret_path": "it comes from the secrets store",
    "registration_shared_secret": "registration is handled by MAS",
    "federation_custom_ca_list": "set synapse_federation_ca_certificates instead",
}
MAS_FORBIDDEN = {
    "matrix": "it is rendered from the Synapse settings and the shared secret",
    "database": "the database is managed by this deployment",
    "secrets": "the secrets come from the secrets store",
    "email": "set the mas_email_* settings instead (the SMTP password comes from the secrets store)",
    "upstream_oauth2": "set mas_upstream_providers instead (client secrets come from the secrets store)",
}
# Keys of MAS's `account` section rendered from settings.
MAS_ACCOUNT_FORBIDDEN = {
    "password_registration_enabled": "set mas_password_registration instead",
    "password_registration_token_required": "set mas_registration_token_required instead",
    "registration_token_required": "set mas_registration_token_required instead",
}

# A check reads one setting's value: it returns what Settings holds, or appends each problem to `problems`
# (naming the setting, the value and what is expected) and returns None.
Check = Callable[[str, Any, list[str]], Any]


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    meaning: str  # one line of Markdown: the README's table
    check: Check
    shown: str | None = None  # the README's default column, when the default value alone does not say it
    per_host: bool = False  # each host has its own value; every other setting is one for the whole deployment


def bad(problems: list[str], key: str, value: Any, expected: str) -> None:
    problems.append(f"{key} = {value!r}: expected {expected}")


def text(pattern: re.Pattern | None, expected: str, required: bool = True) -> Check:
    def check(key, value, problems):
        if value is None:
            if required:
                problems.append(f"{key} is not set: expected {expected}")
            return None
        if not isinstance(value, str) or (pattern and not pattern.match(value)):
            return bad(problems, key, value, expected)
        return value

    return check


def one_of(*choices: str) -> Check:
    expected = f"one of {', '.join(choices)}"

    def check(key, value, problems):
        if value is None:
            problems.append(f"{key} is not set: expected {expected}")
        elif value not in choices:
            bad(problems, key, value, expected)
        else:
            return value

    return check


def boolean(key, value, problems):
    return value if isinstance(value, bool) else bad(problems, key, value, "true or false")


def port(key, value, problems):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return bad(problems, key, value, "a TCP port number between 1 and 65535")
    return value


def https_url(key, value, problems):
    """A bare https://host[:port]/ URL, normalised with its trailing slash; unset (or empty): None."""
    if not value:
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if not parts or parts.scheme != "https" or not parts.hostname or not HOSTNAME.match(parts.hostname):
        return bad(problems, key, value, "an https URL with a host name, like https://matrix.example.org/")
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        return bad(problems, key, value, "a bare https://host[:port]/ URL without path, query or fragment")
    return f"https://{parts.netloc}/"


def download_url(key, value, problems):
    """An http(s) URL; unset: None (settings.together() requires it when there is no release file)."""
    if value is not None and (not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https")):
        return bad(problems, key, value, "an http(s) URL of the MAS release tarball")
    return value


def local_file(key, value, problems):
    """A readable file on the operator's machine, as an absolute path; unset: None."""
    if value is None:
        return None
    path = Path(value).expanduser() if isinstance(value, (str, Path)) else None
    if path is None or not path.is_file():
        return bad(problems, key, value, "an existing file on this machine")
    try:
        path.open("rb").close()
    except OSError as error:
        return bad(problems, key, value, f"a readable file ({error.strerror})")
    return path.resolve()


def certificates(key, value, problems):
    """A list of files on this machine, each holding exactly one PEM certificate (Synapse reads one per file)."""
    value = value or []
    if not isinstance(value, (list, tuple)):
        return bad(problems, key, value, "a list of CA certificate files (PEM) on this machine") or ()
    found = []
    for item in value:
        path = local_file(key, item, [])
        if path is None:
            bad(problems, key, item, "a list of existing, readable CA certificate files (PEM) on this machine")
            continue
        try:
            count = len(x509.load_pem_x509_certificates(path.read_bytes()))
        except ValueError:
            count = 0
        if count != 1:
            expected = f"a file with exactly one PEM certificate (it has {count}): Synapse reads one per file"
            bad(problems, key, str(path), expected)
            continue
        found.append(path)
    return tuple(found)


def extra_config(forbidden: dict[str, str], sections: dict[str, dict[str, str]] | None = None) -> Check:
    """A mapping of config keys merged over a rendered config: `forbidden` keys (and keys of `sections`) refused."""

    def check(key, value, problems):
        value = value or {}
        if not isinstance(value, dict):
            return bad(problems, key, value, "a mapping of config keys to values") or {}
        for name in value:
            if name in forbidden:
                problems.append(f"{key}.{name}: not allowed ({forbidden[name]}); expected {key} without {name}")
        for section, refused in (sections or {}).items():
            for name in value.get(section) if isinstance(value.get(section), dict) else ():
                if name in refused:
                    problems.append(
                        f"{key}.{section}.{name}: not allowed ({refused[name]}); expected {section} without {name}"
                    )
        return value

    return check


def worker_counts(key, value, problems):
    """A mapping of worker kind to count (synapse_workers.KINDS); kinds counted 0 are left out."""
    from matrix_deploy.services.synapse.workers import KINDS

    if value is None or value == {}:
        return {}
    if not isinstance(value, dict):
        return (
            bad(
                problems, key, value, f"a mapping of worker kinds ({', '.join(KINDS)}) to counts, like {{'generic': 2}}"
            )
            or {}
        )
    found = {}
    for kind, count in value.items():
        if kind not in KINDS:
            problems.append(f"{key}.{kind}: unknown worker kind; expected one of {', '.join(KINDS)}")
        elif isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 20:
            problems.append(f"{key}.{kind} = {count!r}: expected a count from 0 to 20")
        elif kind == "background" and count > 1:
            problems.append(f"{key}.background = {count}: expected 0 or 1 (one instance runs background tasks)")
        elif count:
            found[kind] = count
    return found


def directory(key, value, problems):
    return (
        Path(value)
        if isinstance(value, str) and value
        else bad(problems, key, value, "a directory path on this machine")
    )


def age_identity(key, value, problems):
    """The age identity file; unset: $MATRIX_DEPLOY_AGE_IDENTITY's, if that is set."""
    env = os.environ.get("MATRIX_DEPLOY_AGE_IDENTITY")
    if value is not None or not env:
        return local_file(key, value, problems)
    path = local_file("MATRIX_DEPLOY_AGE_IDENTITY", env, problems)
    if path is None:
        bad(problems, "MATRIX_DEPLOY_AGE_IDENTITY", env, "your age identity file on this machine")
    return path


def host_directory(key, value, problems):
    """An absolute directory path on the hosts, without its trailing slash."""
    value = text(re.compile(r"^/[\w./-]*$"), "an absolute directory path on the hosts")(key, value, problems)
    return value and value.rstrip("/")


def dumps_to_keep(key, value, problems):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return bad(problems, key, value, "a whole number of dumps to keep, 1 or more")
    return value


def internal_address(key, value, problems):
    """An IP address or a host name, as given."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not isinstance(value, str) or not HOSTNAME.match(value):
            return bad(problems, key, value, "an IP address or host name")
    return value


MAS_RELEASES = "https://github.com/element-hq/matrix-authentication-service/releases/download"
OPTIONS = (
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
    Option(
        "auth_mode", "native",
        "how Synapse delegates to MAS: `native` = `matrix_authentication_service` (Synapse >= 1.136), or `msc3861` "
        "= `experimental_features.msc3861` (Synapse <= 1.156.0); see below",
        one_of(*AUTH_MODES),
    ),
    Option(
        "allow_auth_mode_downgrade", False, "let a host recorded in native mode go back to `msc3861`", boolean,
    ),
    Option(
        "synapse_version", "1.163.2",
        "Synapse release, installed in `/opt/synapse/<version>` from its lock `locks/synapse-<version>.txt` (see "
        "below); a version without a lock is refused",
        text(VERSION, "a release version like 1.2.3"),
    ),
    Option(
        "synapse_port", 8008,
        "Synapse's HTTP listener, on localhost (plus the internal address when MAS or the proxy is elsewhere)",
        port,
    ),
    Option(
        "synapse_extra_config", {},
        "extra `homeserver.yaml` settings merged over the rendered ones; settings Synapse refuses beside MAS, and "
        "those rendered from other settings, are refused with a reason",
        extra_config(SYNAPSE_FORBIDDEN),
    ),
    Option(
        "synapse_federation_ca_certificates", [],
        "CA certificates (PEM files on your machine, one each) that Synapse trusts for federation **instead of** "
        "the system's (Synapse's `federation_custom_ca_list`): only for a private federation, like staging servers "
        "with certificates from a staging CA or the lab's pair; empty: the system's CAs",
        certificates,
    ),
    Option(
        "synapse_workers", {},
        "this Synapse host's workers: a mapping of kind to count (`generic`, `event_persister`, `federation_sender`, "
        "`media_repository`, `pusher`, `background`; see Workers); `{}`: none. The first host of the `synapse` "
        "group runs the main process (and Redis, when any host has workers), every other one workers only",
        worker_counts, per_host=True,
    ),
    Option(
        "synapse_worker_port", 8100,
        "the first worker's HTTP listener (health, what its kind serves, replication); the next workers' count up",
        port,
    ),
    Option(
        "synapse_metrics_port", 9100,
        "Synapse's Prometheus metrics listener (main process), on the Synapse host's internal addresses only; "
        "the workers' count up from the next port",
        port,
    ),
    Option("redis_port", 6379, "Redis's port, on loopback (only with `synapse_workers`)", port),
    Option(
        "mas_version", "1.22.0", "MAS release, installed in `/opt/mas/<version>`, linked as `/opt/mas/current`",
        text(VERSION, "a release version like 1.2.3"),
    ),
    Option(
        "mas_release_url", f"{MAS_RELEASES}/v{{version}}/mas-cli-x86_64-linux.tar.gz",
        "where the host downloads the release tarball (`{version}` is filled in)",
        download_url, shown="GitHub release of `{version}`",
    ),
    Option(
        "mas_release_file", None,
        "a release tarball on the operator's machine, uploaded to the host (air-gapped hosts); wins over the URL",
        local_file,
    ),
    Option(
        "mas_release_sha256", None,
        "sha256 of the tarball; MAS publishes none, so pin the one you checked. A mismatch stops the deploy",
        text(SHA256, "the release tarball's sha256: 64 lower-case hex digits"), shown="(required)",
    ),
    Option("mas_port", 8080, "MAS's web listener (OAuth, compat login, pages), proxied by nginx", port),
    Option(
        "mas_internal_port", 8081,
        "MAS's internal listener (`/health`; with `admin_user` also the admin API and token endpoint), localhost "
        "only, never proxied",
        port,
    ),
    Option(
        "mas_metrics_port", 9300,
        "MAS's Prometheus metrics listener (`/metrics`), on the MAS host's internal addresses only, never proxied",
        port,
    ),
    Option(
        "mas_extra_config", {},
        "extra MAS `config.yaml` settings merged over the rendered ones (`matrix`, `database`, `secrets`, `email`, "
        "`upstream_oauth2` and the registration keys of `account` are refused)",
        extra_config(MAS_FORBIDDEN, {"account": MAS_ACCOUNT_FORBIDDEN}),
    ),
    Option("postgres_port", 5432, "PostgreSQL's port", port),
    Option(
        "tls", "acme",
        "where the proxy's certificate comes from: `acme` (obtained and renewed on the proxy, see TLS), `files` "
        "(yours, below) or `self-signed` (made on the proxy)",
        one_of(*TLS_MODES),
    ),
    Option(
        "tls_certificate", None,
        'with `tls = "files"`: your certificate (full chain), a file on the operator\'s machine', local_file,
    ),
    Option(
        "tls_certificate_key", None, 'with `tls = "files"`: its key, a file on the operator\'s machine', local_file,
    ),
    Option(
        "acme_directory_url", "https://acme-v02.api.letsencrypt.org/directory",
        "the ACME directory (Let's Encrypt); staging inventories: "
        "`https://acme-staging-v02.api.letsencrypt.org/directory`",
        text(re.compile(r"^https://\S+$"), "the https URL of an ACME directory"),
    ),
    Option(
        "acme_email", None, "the ACME account's email, for the CA's expiry notices",
        text(re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$"), "an email address", required=False),
    ),
    Option(
        "acme_directory_ca", None,
        "a CA file (operator's machine) the ACME directory's own HTTPS is signed by: a private ACME server such "
        "as the lab's pebble",
        local_file,
    ),
    Option(
        "backup_dir", "/var/backups/matrix-deploy",
        "where `pg_dump`s taken before database migrations go, on the MAS and Synapse hosts", host_directory,
    ),
    Option("backup_keep", 5, "how many dumps of each database to keep", dumps_to_keep),
    Option(
        "admin_user", None,
        "initial MAS user allowed to request admin (localpart: 1 to 255 of `a-z 0-9 . _ = + -`, not starting with "
        "`_`), created once through MAS's admin API; password generated into the secrets store; see \"The admin "
        'user"',
        text(
            mas_settings.ADMIN_USER,
            "a user name MAS accepts: 1 to 255 of a-z, 0-9 and . _ = + -, not starting with _",
            required=False,
        ),
    ),
    Option(
        "mas_password_registration", False,
        "MAS's self-service password registration (`account.password_registration_enabled`); needs the email "
        "settings (MAS sends a code to the address)",
        boolean,
    ),
    Option(
        "mas_registration_token_required", False,
        "registrations need a token (`account.password_registration_token_required`; issue with `mas-cli manage "
        "issue-user-registration-token`)",
        boolean,
    ),
    Option(
        "mas_email_smtp_host", None, "SMTP relay MAS sends email through; unset: MAS sends none",
        mas_settings.smtp_host,
    ),
    Option(
        "mas_email_smtp_port", None, "its port; unset: MAS's default for the mode (25, 587, 465)",
        mas_settings.smtp_port,
    ),
    Option("mas_email_smtp_mode", "tls", "`plain`, `starttls` or `tls`", one_of(*mas_settings.SMTP_MODES)),
    Option(
        "mas_email_smtp_username", None,
        "SMTP login; its password is the secrets store's `mas_smtp_password` (set by hand), delivered as "
        "`email.password_file`",
        mas_settings.smtp_username,
    ),
    Option(
        "mas_email_from", None, 'sender and reply-to address, `auth@example.org` or `"Name" <auth@example.org>`',
        mas_settings.email_from, shown="unset (required with a host)",
    ),
    Option(
        "mas_upstream_providers", [],
        "upstream OIDC providers: mappings of `id` (a ULID you choose once), `issuer`, `client_id`, `scope` "
        "(`openid` by default), `human_name`, `brand_name`, `token_endpoint_auth_method` (`client_secret_basic`, "
        "`client_secret_post` or `none`), `claims` (MAS's `claims_imports`); each client secret is the store's "
        "`mas_upstream_client_secret_<id>` (set by hand), delivered as a file. Removing one disables it in MAS, "
        "its users' links kept",
        mas_settings.providers,
    ),
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
)


def defaults() -> dict[str, Any]:
    """Every setting's default (fresh copies: hosts must not share a mutable default)."""
    return {o.name: type(o.default)(o.default) if isinstance(o.default, (dict, list)) else o.default for o in OPTIONS}


README = Path(__file__).resolve().parents[2] / "README.md"
TABLE_START = "<!-- the settings table: made from matrix_deploy/options.py by `make docs` -->"
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
