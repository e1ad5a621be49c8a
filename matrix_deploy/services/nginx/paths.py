"""Where nginx's site, its certificate and certbot's files live on the proxy."""

NGINX_SITE = "/etc/nginx/conf.d/matrix-deploy.conf"
NGINX_TLS = "/etc/nginx/tls"  # the certificate nginx serves: files, or links into certbot's live directory
ACME_WEBROOT = "/var/www/matrix-deploy-acme"  # HTTP-01 challenges, served by nginx on port 80
ACME_LIVE = "/etc/letsencrypt/live/matrix-deploy"  # certbot's lineage (keys in its 0700 archive)
CERTBOT_DROP_IN = "/etc/systemd/system/certbot.service.d/matrix-deploy.conf"
