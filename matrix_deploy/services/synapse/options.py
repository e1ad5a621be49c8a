"""Synapse's settings: version, listeners, extra config, federation CAs and workers."""

from matrix_deploy.operator.declare import VERSION, Option, bad, certificates, extra_config, port, text

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


OPTIONS = (
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
)  # fmt: skip
