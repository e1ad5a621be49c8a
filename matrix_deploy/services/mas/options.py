"""The MAS settings operators configure: registration, email (SMTP) and upstream OIDC providers.

Checked before any connection with the rules MAS 1.22.0 applies when it loads its config (its JSON
schema and the `validate()` of crates/config/src/sections/{account,email,upstream_oauth2}.rs), so a
setting MAS would refuse is refused here with the setting's name. Secrets (the SMTP password, the
providers' client secrets) are never settings: they live in the secrets store and reach MAS as files.
"""

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from matrix_deploy.operator.declare import (
    SHA256,
    VERSION,
    Option,
    boolean,
    download_url,
    extra_config,
    local_file,
    one_of,
    port,
    text,
)

# MAS's admin API rule for a new username (crates/handlers/src/admin/v1/users/add.rs `username_valid`):
# 1 to 255 bytes of a-z 0-9 = _ - . / +, not starting with `_`. `/` is refused here as well: the
# username goes into the admin API's URL path (users/by-username/{username}).
ADMIN_USER = re.compile(r"^(?!_)[a-z0-9=_.+-]{1,255}$")
# A ULID as MAS's schema writes it (upstream_oauth2.providers[].id).
ULID = re.compile(r"^[0123456789ABCDEFGHJKMNPQRSTVWXYZ]{26}$")
# RFC 6749 scope tokens (NQCHAR), which MAS parses the provider's `scope` into.
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
# An email address lettre's Mailbox accepts: `addr@domain` or `Display Name <addr@domain>`.
_ADDRESS = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
MAILBOX = re.compile(rf'^(?:{_ADDRESS}|(?:"[^"]*"|[^<>"]*)\s*<{_ADDRESS}>)$')
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
SMTP_MODES = ("plain", "starttls", "tls")
IMPORT_ACTIONS = ("ignore", "suggest", "force", "require")
ON_CONFLICT = ("fail", "add", "replace", "set")
# Client authentication methods offered here: the ones a client secret from the store is enough for.
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
PROVIDER_KEYS = ("id", "issuer", "client_id", "human_name", "brand_name", "scope", "token_endpoint_auth_method",
                 "claims", "synapse_idp_id")  # fmt: skip
# Synapse's name of an OIDC provider, as its user_external_ids rows hold it: `oidc`, or `oidc-` and its idp_id.
SYNAPSE_IDP_ID = re.compile(r"^oidc(-[A-Za-z0-9._~-]{1,247})?$")
CLAIM_KEYS = {
    "subject": ("template",),
    "localpart": ("action", "template", "on_conflict"),
    "displayname": ("action", "template"),
    "email": ("action", "template"),
    "account_name": ("template",),
    "skip_confirmation": None,
}


@dataclass(frozen=True)
class Email:
    host: str
    port: int | None
    mode: str
    username: str | None
    sender: str


@dataclass(frozen=True)
class Provider:
    id: str
    issuer: str
    client_id: str
    scope: str
    token_endpoint_auth_method: str
    human_name: str | None = None
    brand_name: str | None = None
    claims: dict = field(default_factory=dict, hash=False)
    synapse_idp_id: str | None = None  # the adopted Synapse's provider whose users' links syn2mas brings here

    @property
    def needs_secret(self) -> bool:
        return self.token_endpoint_auth_method != "none"


# Checks of the email settings, one each (options.py); settings.together() checks them together.
def smtp_host(key, host, problems):
    if host is not None and (not isinstance(host, str) or not HOSTNAME.match(host)):
        problems.append(f"{key} = {host!r}: expected the SMTP relay's host name, like smtp.example.org")
        return None
    return host


def smtp_port(key, port, problems):
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
        problems.append(
            f"{key} = {port!r}: expected a TCP port number between 1 and 65535 (unset: 25 for plain, "
            "465 for tls, 587 for starttls)"
        )
        return None
    return port


def smtp_username(key, username, problems):
    if username is not None and (not isinstance(username, str) or not username):
        problems.append(f"{key} = {username!r}: expected the SMTP login name, or unset for none")
        return None
    return username


def email_from(key, sender, problems):
    if sender is not None and (not isinstance(sender, str) or not MAILBOX.match(sender.strip())):
        problems.append(
            f'{key} = {sender!r}: expected an email address, like auth@example.org or "Example" <auth@example.org>'
        )
        return None
    return sender and sender.strip()


def _template(where: str, value: Any, problems: list[str]) -> None:
    if value is not None and not isinstance(value, str):
        problems.append(f"{where} = {value!r}: expected a template string, like {{{{ user.preferred_username }}}}")


def _claims(where: str, claims: Any, problems: list[str]) -> dict:
    """The provider's claims mapping as MAS's `claims_imports`, checked as upstream_oauth2.rs validates it."""
    if claims is None:
        return {}
    if not isinstance(claims, dict):
        problems.append(f"{where} = {claims!r}: expected a mapping (subject, localpart, displayname, email...)")
        return {}
    start = len(problems)
    for name, value in claims.items():
        if name not in CLAIM_KEYS:
            problems.append(f"{where}.{name}: unknown; expected one of {', '.join(CLAIM_KEYS)}")
        elif name == "skip_confirmation":
            if not isinstance(value, bool):
                problems.append(f"{where}.skip_confirmation = {value!r}: expected true or false")
        elif not isinstance(value, dict):
            problems.append(f"{where}.{name} = {value!r}: expected a mapping of {', '.join(CLAIM_KEYS[name])}")
        else:
            for key, item in value.items():
                if key not in CLAIM_KEYS[name]:
                    problems.append(f"{where}.{name}.{key}: unknown; expected one of {', '.join(CLAIM_KEYS[name])}")
                elif key == "template":
                    _template(f"{where}.{name}.template", item, problems)
                elif key == "action" and item not in IMPORT_ACTIONS:
                    problems.append(f"{where}.{name}.action = {item!r}: expected one of {', '.join(IMPORT_ACTIONS)}")
                elif key == "on_conflict" and item not in ON_CONFLICT:
                    problems.append(f"{where}.{name}.on_conflict = {item!r}: expected one of {', '.join(ON_CONFLICT)}")
    if len(problems) > start:
        return {}

    def action(name):
        return (claims.get(name) or {}).get("action", "ignore")

    # MAS's own rules (crates/config/src/sections/upstream_oauth2.rs, UpstreamOAuth2Config::validate).
    if claims.get("skip_confirmation"):
        if action("localpart") != "require":
            problems.append(f"{where}.localpart.action: expected `require` when skip_confirmation is true")
        for name in ("email", "displayname"):
            if action(name) == "suggest":
                problems.append(f"{where}.{name}.action: must not be `suggest` when skip_confirmation is true")
    on_conflict = (claims.get("localpart") or {}).get("on_conflict", "fail")
    if on_conflict != "fail" and action("localpart") not in ("force", "require"):
        problems.append(f"{where}.localpart.action: expected `force` or `require` when on_conflict is `{on_conflict}`")
    return claims


def providers(key: str, value: Any, problems: list[str]) -> tuple[Provider, ...]:
    value = value or []
    if not isinstance(value, list):
        problems.append(f"{key} = {value!r}: expected a list of providers (mappings)")
        return ()
    found, seen, idp_ids = [], set(), set()
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where} = {item!r}: expected a mapping with id, issuer and client_id")
            continue
        start = len(problems)
        for name in item:
            if name not in PROVIDER_KEYS:
                problems.append(f"{where}.{name}: unknown; expected one of {', '.join(PROVIDER_KEYS)}")
        pid = item.get("id")
        if not isinstance(pid, str) or not ULID.match(pid):
            problems.append(
                f"{where}.id = {pid!r}: expected a ULID of 26 upper-case characters (0-9, A-Z without I, L, O, U), "
                "chosen once and never changed: MAS keys the provider and its users' links by it"
            )
        elif pid in seen:
            problems.append(f"{where}.id = {pid!r}: expected an id of its own (another provider has it)")
        else:
            seen.add(pid)
        issuer = item.get("issuer")
        parts = urlsplit(issuer) if isinstance(issuer, str) else None
        if not parts or parts.scheme != "https" or not parts.hostname:
            problems.append(
                f"{where}.issuer = {issuer!r}: expected the provider's https issuer URL (MAS discovers the "
                "provider's endpoints from it; `issuer` is required with discovery)"
            )
        client_id = item.get("client_id")
        if not isinstance(client_id, str) or not client_id:
            problems.append(f"{where}.client_id = {client_id!r}: expected the client id the provider gave you")
        for name in ("human_name", "brand_name"):
            if item.get(name) is not None and not isinstance(item[name], str):
                problems.append(f"{where}.{name} = {item[name]!r}: expected a string")
        scope = item.get("scope", "openid")
        tokens = scope.split(" ") if isinstance(scope, str) else []
        if not tokens or not all(SCOPE_TOKEN.match(t) for t in tokens) or "openid" not in tokens:
            problems.append(
                f"{where}.scope = {scope!r}: expected scopes separated by single spaces, including openid "
                "(like 'openid profile email')"
            )
        method = item.get("token_endpoint_auth_method", "client_secret_basic")
        if method not in AUTH_METHODS:
            problems.append(
                f"{where}.token_endpoint_auth_method = {method!r}: expected one of {', '.join(AUTH_METHODS)}"
            )
        claims = _claims(f"{where}.claims", item.get("claims"), problems)
        idp_id = item.get("synapse_idp_id")
        if idp_id is not None and (not isinstance(idp_id, str) or not SYNAPSE_IDP_ID.match(idp_id)):
            problems.append(
                f"{where}.synapse_idp_id = {idp_id!r}: expected the old Synapse's name of the provider, `oidc` or "
                "`oidc-<its idp_id>` (the auth_provider of its user_external_ids rows)"
            )
        elif idp_id is not None and idp_id in idp_ids:
            problems.append(f"{where}.synapse_idp_id = {idp_id!r}: expected a provider of its own (another has it)")
        elif idp_id is not None:
            idp_ids.add(idp_id)
        if len(problems) == start:
            names = (item.get("human_name"), item.get("brand_name"))
            found.append(Provider(pid, issuer, client_id, scope, method, *names, claims, idp_id))
    return tuple(found)


def config(s, secret_path) -> dict:
    """The `account`, `email` and `upstream_oauth2` sections of MAS's config.yaml for these settings.

    `secret_path(name)` gives the path of a secret file: `smtp_password` or an upstream provider's.
    """
    out: dict = {}
    account = {}
    if s.mas_password_registration:
        account["password_registration_enabled"] = True
    if s.mas_registration_token_required:
        account["password_registration_token_required"] = True
    if account:
        out["account"] = account
    if s.mas_email:
        e = s.mas_email
        email = {"from": e.sender, "reply_to": e.sender, "transport": "smtp", "mode": e.mode, "hostname": e.host}
        if e.port is not None:
            email["port"] = e.port
        if e.username:
            email["username"] = e.username
            email["password_file"] = secret_path("smtp_password")
        out["email"] = email
    if s.mas_upstream_providers:
        providers = []
        for p in s.mas_upstream_providers:
            entry = {"id": p.id, "issuer": p.issuer, "client_id": p.client_id}
            if p.human_name is not None:
                entry["human_name"] = p.human_name
            if p.brand_name is not None:
                entry["brand_name"] = p.brand_name
            entry["scope"] = p.scope
            entry["token_endpoint_auth_method"] = p.token_endpoint_auth_method
            if p.needs_secret:
                entry["client_secret_file"] = secret_path(p.id)
            if p.claims:
                entry["claims_imports"] = p.claims
            if p.synapse_idp_id is not None:
                entry["synapse_idp_id"] = p.synapse_idp_id
            providers.append(entry)
        out["upstream_oauth2"] = {"providers": providers}
    return out


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

MAS_RELEASES = "https://github.com/element-hq/matrix-authentication-service/releases/download"
# The MAS admin API client the deploy creates admin_user with (a ULID, like every MAS client id).
MAS_ADMIN_CLIENT_ID = "000000000000000000MDADM1N0"

OPTIONS = (
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
    Option(
        "admin_user", None,
        "initial MAS user allowed to request admin (localpart: 1 to 255 of `a-z 0-9 . _ = + -`, not starting with "
        "`_`), created once through MAS's admin API; password generated into the secrets store; see \"The admin "
        'user"',
        text(
            ADMIN_USER,
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
        smtp_host,
    ),
    Option(
        "mas_email_smtp_port", None, "its port; unset: MAS's default for the mode (25, 587, 465)",
        smtp_port,
    ),
    Option("mas_email_smtp_mode", "tls", "`plain`, `starttls` or `tls`", one_of(*SMTP_MODES)),
    Option(
        "mas_email_smtp_username", None,
        "SMTP login; its password is the secrets store's `mas_smtp_password` (set by hand), delivered as "
        "`email.password_file`",
        smtp_username,
    ),
    Option(
        "mas_email_from", None, 'sender and reply-to address, `auth@example.org` or `"Name" <auth@example.org>`',
        email_from, shown="unset (required with a host)",
    ),
    Option(
        "mas_upstream_providers", [],
        "upstream OIDC providers: mappings of `id` (a ULID you choose once), `issuer`, `client_id`, `scope` "
        "(`openid` by default), `human_name`, `brand_name`, `token_endpoint_auth_method` (`client_secret_basic`, "
        "`client_secret_post` or `none`), `claims` (MAS's `claims_imports`); each client secret is the store's "
        "`mas_upstream_client_secret_<id>` (set by hand), delivered as a file; `synapse_idp_id` (`oidc-<idp_id>`) when "
        "adopting a Synapse whose users log in through that provider (syn2mas brings their links to this one; the "
        "old provider's client secret goes to the store unless it has one). "
        "Removing one disables it in MAS, its users' links kept",
        providers,
    ),
)  # fmt: skip
