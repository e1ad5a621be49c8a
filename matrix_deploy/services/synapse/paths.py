"""Where Synapse lives on its hosts."""

SYNAPSE_USER = "synapse"
SYNAPSE_HOME = "/opt/synapse"  # one virtualenv per version in /opt/synapse/<version>, linked as current
SYNAPSE_CURRENT = f"{SYNAPSE_HOME}/current"
SYNAPSE_ETC = "/etc/synapse"
SYNAPSE_CONFIG = f"{SYNAPSE_ETC}/homeserver.yaml"
SYNAPSE_SECRETS = f"{SYNAPSE_ETC}/secrets"
SYNAPSE_FEDERATION_CA = f"{SYNAPSE_ETC}/federation-ca"  # CAs Synapse trusts for federation, when set
SYNAPSE_DATA = "/var/lib/synapse"
