"""Where things live on the hosts and in this repository, named once."""

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
STATE = "/var/lib/matrix-deploy"

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
SYNAPSE_DATA = "/var/lib/synapse"

NGINX_SITE = "/etc/nginx/conf.d/matrix-deploy.conf"
NGINX_TLS = "/etc/nginx/tls"

POSTGRES_SQL = "/var/lib/postgresql/matrix-deploy-roles.sql"  # in postgres's home: readable by postgres only


def managed(postgres_version: str) -> dict[str, int]:
    """Everything the deploy manages on a host, as host_state snapshot roots: path -> levels listed below it."""
    return {
        STATE: 2,
        MAS_HOME: 2,
        MAS_ETC: 2,
        SYNAPSE_HOME: 2,
        SYNAPSE_ETC: 2,
        SYNAPSE_DATA: 0,
        NGINX_TLS: 1,
        "/etc/nginx/conf.d": 1,
        "/etc/nginx/sites-enabled": 1,
        f"/etc/postgresql/{postgres_version}/main": 2,
        f"/etc/systemd/system/postgresql@{postgres_version}-main.service.d": 1,
        "/etc/systemd/system/nginx.service.d": 1,
        "/etc/systemd/system/mas.service": 0,
        "/etc/systemd/system/synapse.service": 0,
        POSTGRES_SQL: 0,
    }
