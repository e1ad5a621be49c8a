"""`mas-cli doctor`, as MAS 1.22.0's crates/cli/src/commands/doctor.rs runs it: the same checks in the same order
(the well-known document, the homeserver's versions, whoami with a bogus token, the MAS API with the secret, the
legacy login), each one log line (✅ info, ⚠️ warn, ❌ error), the first line of each message as MAS words it.
Like MAS it prints `matrix.secret` when the MAS API refuses it: whoever shows this output masks it."""

import json
import ssl
import urllib.error
import urllib.request
from urllib.parse import urljoin

from . import config as cfg
from . import log

TARGET = "mas_cli::commands::doctor"
DOCS = "https://element-hq.github.io/matrix-authentication-service"


def _get(url: str, token: str | None = None):
    """(status, body text) or raises OSError; the system's CAs, as MAS's reqwest client uses them."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=ssl.create_default_context()) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def run(config: dict) -> int:
    log.info(TARGET, "💡 Running diagnostics, make sure that both MAS and Synapse are running, and that MAS is "
                     "using the same configuration files as this tool.")  # fmt: skip
    http, matrix = cfg.http(config), cfg.matrix(config)
    base = http.get("public_base") or ""
    issuer = http.get("issuer") or base
    domain, endpoint, secret = matrix["homeserver"], matrix["endpoint"], cfg.shared_secret(config)
    if not issuer.startswith("https://"):
        log.warn(TARGET, "⚠️ The issuer in the config (`http.issuer`/`http.public_base`) is not an HTTPS URL.")
    well_known = f"https://{domain}/.well-known/matrix/client"
    discovered = None
    try:
        status, text = _get(well_known)
        if not 200 <= status < 300:
            log.warn(TARGET, f"⚠️ Matrix client well-known replied with {status}, expected 2xx.")
        # 1.22.0 only reads the homeserver's base URL from it (no finding when it is fine).
        discovered = (json.loads(text).get("m.homeserver") or {}).get("base_url")
    except ValueError as error:
        log.warn(TARGET, f'⚠️ Invalid JSON for the well-known document at "{well_known}".\nError details: {error}')
    except OSError as error:
        log.warn(TARGET, f'⚠️ Failed to fetch well-known document at "{well_known}".\nError details: {error}')
    versions = urljoin(endpoint, "/_matrix/client/versions")
    try:
        status, _ = _get(versions)
        reachable = 200 <= status < 300
        if reachable:
            log.info(TARGET, f'✅ Homeserver is reachable at "{versions}"')
        else:
            log.error(TARGET, f'❌Can\'t reach the homeserver at "{versions}", got {status}.')
    except OSError as error:
        reachable = False
        log.error(TARGET, f'❌ Can\'t reach the homeserver at "{versions}".\n\nError details: {error}')
    if reachable:
        whoami = urljoin(endpoint, "/_matrix/client/v3/account/whoami")
        try:
            status, text = _get(whoami, "averyinvalidtokenireallyhopethisisnotvalid")
            if status == 401:
                log.info(
                    TARGET, f'✅ Homeserver at "{whoami}" is reachable, and it correctly rejected an invalid token.'
                )
            elif status < 400:
                log.error(TARGET, f'❌ The homeserver at "{whoami}" replied with {status}.')
            elif status == 503:
                log.error(TARGET, f'❌ The homeserver at "{whoami}" replied with {status}.\nThis means probably means '
                                  f"that the homeserver was unable to reach MAS to validate the token.\n\n    {text}")  # fmt: skip
            else:
                log.warn(TARGET, f'⚠️ The homeserver at "{whoami}" replied with {status}.')
        except OSError as error:
            log.error(TARGET, f'❌ Can\'t reach the homeserver at "{whoami}".\n\nError details: {error}')
        # Without its `localpart` parameter: 400 when the secret is accepted, 403 when not, 404 without MAS's API.
        mas_api = urljoin(endpoint, "/_synapse/mas/is_localpart_available")
        try:
            status, _ = _get(mas_api, secret)
            if status == 400:
                log.info(TARGET, f'✅ The Synapse MAS API is reachable with authentication at "{mas_api}".')
            else:
                # MAS prints the secret it used here (`secret: "..."`, twice).
                log.error(TARGET, f'❌ A Synapse MAS API endpoint at "{mas_api}" replied with {status}.\n'
                                  f"    secret: {json.dumps(secret)}")  # fmt: skip
        except OSError as error:
            log.error(TARGET, f'❌ Can\'t reach the Synapse MAS API at "{mas_api}".\n\nError details: {error}')
    login = urljoin(discovered or endpoint, "/_matrix/client/v3/login")
    try:
        status, text = _get(login)
        if 200 <= status < 300:
            try:
                flows = json.loads(text).get("flows") or []
            except ValueError:
                flows = []
            if any(f.get("type") == "m.login.sso" and f.get("org.matrix.msc3824.delegated_oidc_compatibility") is True
                   for f in flows):  # fmt: skip
                log.info(TARGET, f'✅ The legacy login API at "{login}" is reachable and is handled by MAS.')
            else:
                log.warn(TARGET, f'⚠️ The legacy login API at "{login}" is reachable, but it doesn\'t look to be '
                                 "handled by MAS.")  # fmt: skip
        else:
            log.error(
                TARGET, f'The legacy login API at "{login}" replied with {status}.\nSee {DOCS}/setup/reverse-proxy.html'
            )
    except OSError as error:
        log.warn(TARGET, f'⚠️ Can\'t reach the legacy login API at "{login}".\n\nError details: {error}')
    return 0
