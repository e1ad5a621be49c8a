"""nginx: TLS front for the homeserver and MAS, with the MAS compatibility layer."""

import json
import shlex
from functools import partial

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from matrix_deploy.engine import host_state, pending, remote, wants
from matrix_deploy.engine.config_files import install_checked
from matrix_deploy.engine.debian import RELEASES, Release
from matrix_deploy.engine.firewall import Door
from matrix_deploy.engine.paths import STATE
from matrix_deploy.engine.render import render
from matrix_deploy.engine.units import drop_in
from matrix_deploy.engine.wants import Directory, File
from matrix_deploy.operator.inventory import Deployment
from matrix_deploy.services.nginx.paths import ACME_LIVE, ACME_WEBROOT, CERTBOT_DROP_IN, NGINX_SITE, NGINX_TLS
from matrix_deploy.services.synapse import workers as synapse_workers

CERTIFICATE = f"{NGINX_TLS}/matrix-deploy.crt"
CERTIFICATE_KEY = f"{NGINX_TLS}/matrix-deploy.key"
DEFAULT_SITE = "/etc/nginx/sites-enabled/default"
ACME_REQUEST = f"{STATE}/acme-request"  # what the current ACME certificate was asked for
READY = "curl -fsS -k -o /dev/null https://127.0.0.1/.well-known/matrix/server"

# What this role reads through the host's snapshot (curl: health checks); with tls = "acme" also certbot.
NEEDS = host_state.Needs(
    paths={
        NGINX_TLS: 1,
        "/etc/nginx/conf.d": 1,
        "/etc/nginx/sites-enabled": 1,
        "/etc/systemd/system/nginx.service.d": 1,
        "/etc/systemd/system/certbot.service.d": 1,
    },
    packages=("nginx", "openssl", "curl"),
)
ACME_PACKAGES = ("certbot",)


def doors(s, here: str) -> list[Door]:
    """The proxy's doors: HTTP (ACME's challenges, the redirect) and HTTPS, for anyone."""
    return [Door("nginx (HTTP, HTTPS)", (80, 443))] if here in s.placement.proxy else []


def render_site(d: Deployment, proxy_host: str, release: Release = RELEASES["13"]) -> str:
    s, p = d.settings, d.settings.placement
    ws = synapse_workers.workers(s)
    names = [s.public_host] + ([s.matrix_server_name] if s.matrix_server_name != s.public_host else [])
    client = {
        "m.homeserver": {"base_url": s.matrix_public_url},
        "org.matrix.msc2965.authentication": {"issuer": s.mas_public_url, "account": f"{s.mas_public_url}account/"},
    }
    return render(
        "nginx/matrix.conf.j2",
        synapse_upstream=p.endpoint(proxy_host, p.synapse_main, s.synapse_port),
        mas_upstreams=[p.endpoint(proxy_host, m, s.mas_port) for m in p.mas],
        http2_directive=release.nginx_http2_directive,
        homeserver_names=names,
        mas_host=s.mas_public_host,
        acme_webroot=ACME_WEBROOT if s.tls == "acme" else None,
        certificate=CERTIFICATE,
        certificate_key=CERTIFICATE_KEY,
        well_known_client=json.dumps(client, separators=(",", ":")),
        well_known_server=json.dumps({"m.server": f"{s.public_host}:443"}, separators=(",", ":")),
        worker_upstreams=synapse_workers.upstreams(ws, partial(p.endpoint, proxy_host)),
        worker_routes=synapse_workers.routes(ws),
    )


def _names(d: Deployment) -> list[str]:
    """Every name the proxy serves: the homeserver's public host, MAS's, and the server name's."""
    s = d.settings
    return list(dict.fromkeys([s.public_host, s.mas_public_host, s.matrix_server_name]))


def _certificate(d: Deployment):
    """The certificate nginx starts with: yours, or a self-signed one (also ACME's bootstrap: nginx needs
    a certificate to serve 443 before the ACME certificate exists)."""
    s = d.settings
    directory = Directory("TLS directory", NGINX_TLS, "root", "root", "700")
    if s.tls == "files":
        return wants.apply([
            directory,
            File("TLS certificate", CERTIFICATE, s.tls_certificate.read_text(), "root", "root", "644"),
            File("TLS private key", CERTIFICATE_KEY, s.tls_certificate_key.read_text(), "root", "root", "400",
                 secret=True),
        ])  # fmt: skip
    wants.apply([directory])
    if host_state.current().exists(CERTIFICATE_KEY):
        return []
    san = ",".join(f"DNS:{n}" for n in _names(d))
    return [
        remote.shell(
            name="Self-signed TLS certificate" + (" (until ACME's)" if s.tls == "acme" else ""),
            commands=[
                f"umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN={s.public_host}"
                f" -addext subjectAltName={san} -keyout {CERTIFICATE_KEY} -out {CERTIFICATE} 2>/dev/null"
                f" && chmod 400 {CERTIFICATE_KEY} && chmod 644 {CERTIFICATE}"
            ],
        )
    ]


def _acme(d: Deployment):
    """With tls = acme, once nginx serves the challenges on port 80: certbot obtains one certificate for
    every name, nginx's certificate paths become links into certbot's live lineage, and nginx reloads.

    Renewal is certbot's own (Debian's certbot.timer, twice a day); its deploy hook reloads nginx, so a
    renewed certificate is served without a restart. The recorded request (directory, names, email)
    makes a re-run a no-op and a change of names a new request.
    """
    s, state = d.settings, host_state.current()
    env = ""
    if s.acme_directory_ca:
        ca = f"{NGINX_TLS}/acme-directory-ca.pem"
        host_state.put("ACME directory's CA", ca, s.acme_directory_ca.read_text(), "root", "root", "644")
        env = f"REQUESTS_CA_BUNDLE={ca} "
    # Unattended renewals reach a private ACME directory too.
    drop_in = host_state.put("certbot renewals trust the ACME directory's CA", CERTBOT_DROP_IN,
                             f"[Service]\nEnvironment=REQUESTS_CA_BUNDLE={ca}\n" if s.acme_directory_ca else "[Service]\n",
                             "root", "root", "644")  # fmt: skip
    if drop_in is not None:
        remote.shell(name="systemd reads certbot's drop-in", commands=["systemctl daemon-reload"],
                     _if=drop_in.did_change)  # fmt: skip
    request = f"{s.acme_directory_url}\n{' '.join(_names(d))}\n{s.acme_email or ''}\n"
    linked = state.is_link(CERTIFICATE, f"{ACME_LIVE}/fullchain.pem") and state.is_link(
        CERTIFICATE_KEY, f"{ACME_LIVE}/privkey.pem"
    )
    if linked and state.is_file(ACME_REQUEST, request):
        return None
    account = f"--email {shlex.quote(s.acme_email)}" if s.acme_email else "--register-unsafely-without-email"
    domains = " ".join(f"-d {n}" for n in _names(d))
    return remote.shell(
        name=f"Certificate over ACME for {', '.join(_names(d))}",
        commands=[
            f"""
set -e
install -d -m 755 {ACME_WEBROOT}
{env}certbot certonly --non-interactive --agree-tos --quiet --server {shlex.quote(s.acme_directory_url)} {account} \
    --webroot -w {ACME_WEBROOT} --cert-name matrix-deploy {domains} --keep-until-expiring \
    --deploy-hook 'systemctl reload nginx'
ln -sfn {ACME_LIVE}/fullchain.pem {CERTIFICATE}
ln -sfn {ACME_LIVE}/privkey.pem {CERTIFICATE_KEY}
nginx -t 2>/dev/null
systemctl reload nginx
printf %s {shlex.quote(request)} > {ACME_REQUEST}
"""
        ],
    )


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
    marked = pending.mark("nginx", changes)
    sandbox = drop_in(
        "nginx", "nginx.service", "nginx/hardening.conf.j2",
        # The master binds 80/443, opens logs owned by www-data and drops to www-data for its workers.
        capabilities="CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_CHOWN CAP_DAC_OVERRIDE CAP_KILL",
        denied_syscalls="@clock @cpu-emulation @debug @module @mount @obsolete @raw-io @reboot @swap",
    )  # fmt: skip
    # A reload does not apply a unit's sandboxing: a changed drop-in needs a real restart.
    pending.restart("nginx-unit", "nginx", READY, pending.mark("nginx-unit", [sandbox]))
    pending.restart("nginx", "nginx", READY, marked, action="reload-or-restart")
    if d.settings.tls == "acme":
        _acme(d)
