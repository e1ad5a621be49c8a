"""nginx: TLS front for the homeserver and MAS, with the MAS compatibility layer."""

import json

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from . import host_state, remote, restarts
from .config_files import install_checked
from .inventory import Deployment
from .paths import NGINX_SITE, NGINX_TLS
from .platform import RELEASES, Release
from .render import render
from .units import drop_in

CERTIFICATE = f"{NGINX_TLS}/matrix-deploy.crt"
CERTIFICATE_KEY = f"{NGINX_TLS}/matrix-deploy.key"
DEFAULT_SITE = "/etc/nginx/sites-enabled/default"
READY = "curl -fsS -k -o /dev/null https://127.0.0.1/.well-known/matrix/server"


def render_site(d: Deployment, proxy_host: str, release: Release = RELEASES["13"]) -> str:
    s, p = d.settings, d.settings.placement
    names = [s.public_host] + ([s.server_name] if s.server_name != s.public_host else [])
    client = {
        "m.homeserver": {"base_url": s.public_url},
        "org.matrix.msc2965.authentication": {"issuer": s.mas_public_url, "account": f"{s.mas_public_url}account/"},
    }
    return render(
        "nginx/matrix.conf.j2",
        synapse_upstream=p.endpoint(proxy_host, p.synapse, s.synapse_port),
        mas_upstream=p.endpoint(proxy_host, p.mas, s.mas_port),
        http2_directive=release.nginx_http2_directive,
        homeserver_names=names,
        mas_host=s.mas_public_host,
        certificate=CERTIFICATE,
        certificate_key=CERTIFICATE_KEY,
        well_known_client=json.dumps(client, separators=(",", ":")),
        well_known_server=json.dumps({"m.server": f"{s.public_host}:443"}, separators=(",", ":")),
    )


def _certificate(d: Deployment):
    s = d.settings
    host_state.directory("TLS directory", NGINX_TLS, "root", "root", "700")
    if s.tls_certificate:
        return [
            host_state.put("TLS certificate", CERTIFICATE, s.tls_certificate.read_text(), "root", "root", "644"),
            host_state.secret("TLS private key", CERTIFICATE_KEY, s.tls_certificate_key.read_text(), "root", "root"),
        ]
    if host_state.current().exists(CERTIFICATE_KEY):
        return []
    names = sorted({s.public_host, s.mas_public_host, s.server_name})
    san = ",".join(f"DNS:{n}" for n in names)
    return [
        remote.shell(
            name="Self-signed TLS certificate (no tls_certificate set)",
            commands=[
                f"umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN={s.public_host}"
                f" -addext subjectAltName={san} -keyout {CERTIFICATE_KEY} -out {CERTIFICATE} 2>/dev/null"
                f" && chmod 400 {CERTIFICATE_KEY} && chmod 644 {CERTIFICATE}"
            ],
        )
    ]


@deploy("nginx")
def install(d: Deployment, release: Release):
    changes = _certificate(d)
    # nginx's package creates the default site when it installs, after host_state looked.
    if not host_state.current().packages_installed(["nginx"]):
        changes.append(files.link(name="No default nginx site", path=DEFAULT_SITE, present=False))
    else:
        changes.append(host_state.absent("No default nginx site", DEFAULT_SITE))
    changes.append(
        install_checked(
            NGINX_SITE,
            render_site(d, host.name, release),
            check="nginx -t",
            user="root",
            group="root",
            mode="644",
            service="nginx",
            secrets=d.secrets.values.values(),
        )  # fmt: skip
    )
    marked = restarts.mark("nginx", changes)
    sandbox = drop_in(
        "nginx", "nginx.service", "nginx/hardening.conf.j2",
        # The master binds 80/443, opens logs owned by www-data and drops to www-data for its workers.
        capabilities="CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_CHOWN CAP_DAC_OVERRIDE CAP_KILL",
        denied_syscalls="@clock @cpu-emulation @debug @module @mount @obsolete @raw-io @reboot @swap",
    )  # fmt: skip
    # A reload does not apply a unit's sandboxing: a changed drop-in needs a real restart.
    restarts.restart("nginx-unit", "nginx", READY, restarts.mark("nginx-unit", [sandbox]))
    restarts.restart("nginx", "nginx", READY, marked, action="reload-or-restart")
