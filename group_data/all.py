# Every setting of matrix-deploy with its default, one line each. Override any of them in an
# inventory (group data of `all`, or a group such as `synapse`) or in group_data/<group>.py.
# Settings are checked before any host is contacted; the README mirrors this file.

# The homeserver's name: the part after ':' in user IDs (@alice:example.org). Required.
matrix_server_name = None
# Public URL of the client and federation APIs (nginx); default https://matrix.<server name>/.
matrix_public_url = None
# Public URL of MAS, its OIDC issuer and login pages; default https://auth.<server name>/.
mas_public_url = None

# How Synapse delegates authentication to MAS: "native" (matrix_authentication_service, Synapse >= 1.136)
# or "msc3861" (experimental_features.msc3861, Synapse <= 1.156.0, with a MAS client for Synapse).
auth_mode = "native"
# Let a host recorded in native mode go back to msc3861 (only with a database from before the upgrade).
allow_auth_mode_downgrade = False

# Synapse release installed from PyPI into /opt/synapse/<version>.
synapse_version = "1.163.2"
# Synapse's HTTP listener (client + federation + /_synapse/mas), bound to localhost or the internal address.
synapse_port = 8008
# Extra homeserver.yaml settings merged over the rendered ones (settings Synapse forbids beside MAS are refused).
synapse_extra_config = {}
# CA certificates (PEM files on the operator's machine, one certificate each) Synapse trusts for federation
# INSTEAD of the system's: only for a private federation (staging, the lab's ACME CA). Empty: the system's CAs.
synapse_federation_ca_certificates = []

# MAS release installed under /opt/matrix-authentication-service/<version>.
mas_version = "1.22.0"
# Where the release tarball comes from: a URL fetched by the host ({version} is filled in)...
mas_release_url = "https://github.com/element-hq/matrix-authentication-service/releases/download/v{version}/mas-cli-x86_64-linux.tar.gz"
# ...or a file on the operator's machine uploaded to the hosts (air-gapped hosts); wins over the URL when set.
mas_release_file = None
# sha256 of the release tarball (MAS publishes none: pin the one you checked). Required.
mas_release_sha256 = None
# MAS's public web listener (OAuth, compat login, pages), proxied by nginx.
mas_port = 8080
# MAS's internal listener (/health), never proxied.
mas_health_port = 8081
# Extra MAS config.yaml settings merged over the rendered ones.
mas_extra_config = {}

# PostgreSQL's port.
postgres_port = 5432

# Where the proxy's certificates come from: "acme" (obtained and renewed on the proxy by certbot, HTTP-01 on
# port 80), "files" (tls_certificate and tls_certificate_key below), or "self-signed" (made on the proxy).
tls = "acme"
# With tls = "files": your certificate (full chain) and key, files on the operator's machine.
tls_certificate = None
tls_certificate_key = None
# The ACME directory: Let's Encrypt; staging inventories: https://acme-staging-v02.api.letsencrypt.org/directory
acme_directory_url = "https://acme-v02.api.letsencrypt.org/directory"
# The ACME account's email (expiry notices from the CA); unset: an account without email.
acme_email = None
# A CA certificate file (operator's machine) that the ACME directory's own HTTPS is signed by: only for a
# private ACME server (the lab's pebble); unset: the system's CAs.
acme_directory_ca = None

# Where PostgreSQL dumps taken before database migrations (new MAS release or Synapse version) go, on the service's host.
backup_dir = "/var/backups/matrix-deploy"
# How many dumps of each database to keep there.
backup_keep = 5

# Initial MAS admin user (localpart), created once through MAS's admin API; its password is generated into the secrets store.
admin_user = None

# MAS: self-service password registration (off: accounts are made by an admin or an upstream provider).
mas_password_registration = False
# MAS: registrations need a registration token (issued with `mas-cli manage issue-user-registration-token`).
mas_registration_token_required = False
# MAS email over SMTP (unset host: MAS sends no email). The SMTP password, with a username, is the secrets
# store's `mas_smtp_password`, set there by hand. Mode: plain, starttls or tls; port unset: 25, 587 or 465.
mas_email_smtp_host = None
mas_email_smtp_port = None
mas_email_smtp_mode = "tls"
mas_email_smtp_username = None
mas_email_from = None
# MAS upstream OIDC providers: a list of mappings {id (a ULID, never changed), issuer, client_id, scope
# ("openid" by default), human_name, brand_name, token_endpoint_auth_method (client_secret_basic), claims
# (MAS's claims_imports: localpart/displayname/email {action, template}...)}. Each client secret is the
# secrets store's `mas_upstream_client_secret_<id>`, set there by hand.
mas_upstream_providers = []

# Where the per-inventory secrets store lives on the operator's machine (relative to the working directory).
secrets_dir = ".secrets"
# Your age identity file (age-keygen's output) on the operator's machine: the store is then kept encrypted as
# <inventory>.yaml.age (also from $MATRIX_DEPLOY_AGE_IDENTITY). Unset: a plain store (mode 0600, git-ignored).
secrets_age_identity = None

# Address other hosts of the deployment use to reach this host (split layouts); default: its inventory name.
internal_address = None
