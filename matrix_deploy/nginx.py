"""nginx: TLS front for the homeserver and MAS, with the MAS compatibility layer."""

import json

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import files, server

from . import restarts
from .config_files import install_checked
from .inventory import Deployment
from .paths import NGINX_SITE, NGINX_TLS, TEMPLATES
from .secret_files import secret_file

CERTIFICATE = f"{NGINX_TLS}/matrix-deploy.crt"
CERTIFICATE_KEY = f"{NGINX_TLS}/matrix-deploy.key"


def render_site(d: Deployment, proxy_host: str) -> str:
    s, p = d.settings, d.settings.placement
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined, keep_trailing_newline=True)
    names = [s.public_host] + ([s.server_name] if s.server_name != s.public_host else [])
    client = {
        "m.homeserver": {"base_url": s.public_url},
        "org.matrix.msc2965.authentication": {"issuer": s.mas_public_url, "account": f"{s.mas_public_url}account/"},
    }
    return env.get_template("nginx/matrix.conf.j2").render(
        synapse_upstream=f"{p.reach(proxy_host, p.synapse)}:{s.synapse_port}",
        mas_upstream=f"{p.reach(proxy_host, p.mas)}:{s.mas_port}",
        homeserver_names=names,
        mas_host=s.mas_public_host,
        certificate=CERTIFICATE,
        certificate_key=CERTIFICATE_KEY,
        well_known_client=json.dumps(client, separators=(",", ":")),
        well_known_server=json.dumps({"m.server": f"{s.public_host}:443"}, separators=(",", ":")),
    )


def _certificate(d: Deployment):
    s = d.settings
    files.directory(name="TLS directory", path=NGINX_TLS, user="root", group="root", mode="700")
    if s.tls_certificate:
        return [
            files.put(name="TLS certificate", src=str(s.tls_certificate), dest=CERTIFICATE, mode="644"),
            secret_file(
                name="TLS private key",
                path=CERTIFICATE_KEY,
                content=s.tls_certificate_key.read_text(),
                user="root",
                group="root",
                mode="400",
            ),  # fmt: skip
        ]
    if host.get_fact(File, path=CERTIFICATE_KEY):
        return []
    names = sorted({s.public_host, s.mas_public_host, s.server_name})
    san = ",".join(f"DNS:{n}" for n in names)
    return [
        server.shell(
            name="Self-signed TLS certificate (no tls_certificate set)",
            commands=[
                f"umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN={s.public_host}"
                f" -addext subjectAltName={san} -keyout {CERTIFICATE_KEY} -out {CERTIFICATE} 2>/dev/null"
                f" && chmod 400 {CERTIFICATE_KEY} && chmod 644 {CERTIFICATE}"
            ],
        )
    ]


@deploy("nginx")
def install(d: Deployment):
    changes = _certificate(d)
    changes.append(files.link(name="No default nginx site", path="/etc/nginx/sites-enabled/default", present=False))
    changes.append(
        install_checked(
            NGINX_SITE,
            render_site(d, host.name),
            check="nginx -t",
            user="root",
            group="root",
            mode="644",
            service="nginx",
        )  # fmt: skip
    )
    marked = restarts.mark("nginx", changes)
    restarts.restart(
        "nginx", "nginx", "curl -fsS -k -o /dev/null https://127.0.0.1/.well-known/matrix/server", marked,
        action="reload-or-restart",
    )  # fmt: skip
