"""Where things live on the hosts and in this repository, named once."""

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
STATE = "/var/lib/matrix-deploy"  # root only (0700): records, locks, the deploy's own credentials
# Held for the whole run by a process that lives as long as the run's SSH connection: one run at a time.
RUN_LOCK = f"{STATE}/run.lock"
# Held by each remote command of a run, so the next run waits for what a dead run left running.
WORK_LOCK = f"{STATE}/work.lock"
# In the sudo user's home (0700): where pyinfra stages a secret upload before sudo moves it into place.
UPLOAD_DIR = ".matrix-deploy-uploads"

MAS_USER = "mas"
MAS_HOME = "/opt/mas"  # releases in /opt/mas/<version>, the running one linked as /opt/mas/current
MAS_CURRENT = f"{MAS_HOME}/current"
MAS_ETC = "/etc/mas"
MAS_CONFIG = f"{MAS_ETC}/config.yaml"
MAS_SECRETS = f"{MAS_ETC}/secrets"

SYNAPSE_USER = "synapse"
SYNAPSE_HOME = "/opt/synapse"  # one virtualenv per version in /opt/synapse/<version>, linked as current
SYNAPSE_CURRENT = f"{SYNAPSE_HOME}/current"
SYNAPSE_ETC = "/etc/synapse"
SYNAPSE_CONFIG = f"{SYNAPSE_ETC}/homeserver.yaml"
SYNAPSE_SECRETS = f"{SYNAPSE_ETC}/secrets"
SYNAPSE_FEDERATION_CA = f"{SYNAPSE_ETC}/federation-ca"  # CAs Synapse trusts for federation, when set
SYNAPSE_DATA = "/var/lib/synapse"

NGINX_SITE = "/etc/nginx/conf.d/matrix-deploy.conf"
NGINX_TLS = "/etc/nginx/tls"  # the certificate nginx serves: files, or links into certbot's live directory
ACME_WEBROOT = "/var/www/matrix-deploy-acme"  # HTTP-01 challenges, served by nginx on port 80
ACME_LIVE = "/etc/letsencrypt/live/matrix-deploy"  # certbot's lineage (keys in its 0700 archive)
CERTBOT_DROP_IN = "/etc/systemd/system/certbot.service.d/matrix-deploy.conf"

POSTGRES_SQL = f"{STATE}/postgres-roles.sql"  # root only; psql reads it on its standard input
