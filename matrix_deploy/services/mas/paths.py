"""Where MAS lives on its hosts."""

MAS_USER = "mas"
MAS_HOME = "/opt/mas"  # releases in /opt/mas/<version>, the running one linked as /opt/mas/current
MAS_CURRENT = f"{MAS_HOME}/current"
MAS_ETC = "/etc/mas"
MAS_CONFIG = f"{MAS_ETC}/config.yaml"
MAS_SECRETS = f"{MAS_ETC}/secrets"
