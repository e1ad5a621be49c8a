"""OAuth 2.0 + PKCE login as Element X does it, in a real browser (headless Chromium), through the lab's nginx.

A Debian 12 lab host with the whole stack (deployed as root); MAS is the tests' stand-in, which learnt this flow
from MAS 1.22.0 (tests/support/mas_standin/mas_standin/oauth.py). The test is the native client: it discovers MAS through
Synapse's auth_metadata, registers itself (MSC2966) with a loopback redirect URI, sends the browser to the
authorization endpoint with an S256 code challenge and a device scope, where a person would sign in on MAS's login
page (fields `username` and `password`) and consent ("Continue"); the code arrives at the test's own HTTP server on
the loopback, and is exchanged with the verifier (a wrong one first: refused). Then Matrix `whoami` through nginx
shows the device of the scope, and a refresh-token grant gives a working new pair.

Chromium trusts the lab's ACME root (.lab*/acme-root.pem) through an NSS database of its own (in a throwaway
HOME), and nothing else: TLS is verified, as the second test shows by refusing the lab without that root.
Chromium, its driver and certutil come from Debian (installed here through apt when missing), selenium from PyPI.
Screenshots of the login and consent pages (and of a failure, with its page source) are kept under
.lab*/artifacts/browser_login/; a failing assertion names the directory.
"""

import base64
import hashlib
import http.client
import http.server
import json
import os
import queue
import secrets
import shutil
import socket
import ssl
import string
import subprocess
import tempfile
import threading
import urllib.parse
from pathlib import Path

import pytest

from matrix_deploy import lab
from matrix_deploy.lab.release import prepare as prepare_release
from matrix_deploy.operator.inventory import build
from tests.support.lab import LAB_SETTINGS, PUBLIC_HOST, ROOT, lab_settings, pyinfra

pytestmark = pytest.mark.lab

RELEASE = os.environ.get("MATRIX_DEPLOY_LAB_RELEASE", "12")
MAS_HOST = "auth.lab.test"
ARTIFACTS = lab.LAB_DIR / "artifacts" / "browser_login"
PACKAGES = {"chromium": "chromium", "chromedriver": "chromium-driver", "certutil": "libnss3-tools"}
UNSTABLE_API = "urn:matrix:org.matrix.msc2967.client:api:*"
UNSTABLE_DEVICE = "urn:matrix:org.matrix.msc2967.client:device:"


def ensure_browser() -> None:
    """Debian's chromium, chromium-driver and certutil, installed through apt if missing."""
    missing = [package for program, package in PACKAGES.items() if shutil.which(program) is None]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]


class Lab:
    """HTTPS to the lab's public names at the proxy's address, verified against the lab's ACME root only."""

    def __init__(self, proxy_address: str):
        self.address = proxy_address
        self.root = lab.LAB_DIR / "acme-root.pem"
        self.context = ssl.create_default_context(cafile=str(self.root))  # that root alone, not the system's

    def request(self, method: str, url: str, body=None, headers=None, form=False):
        """(status, JSON or text) of one request; `form` sends a dict as application/x-www-form-urlencoded."""
        parts = urllib.parse.urlsplit(url)
        assert parts.scheme == "https" and parts.hostname.endswith(".lab.test"), url
        sock = socket.create_connection((self.address, parts.port or 443), timeout=30)
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 443, timeout=30)
        conn.sock = self.context.wrap_socket(sock, server_hostname=parts.hostname)
        headers = dict(headers or {})
        if body is not None and form:
            data = urllib.parse.urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        else:
            data = None
        path = parts.path + ("?" + parts.query if parts.query else "")
        conn.request(method, path, body=data, headers={"Host": parts.netloc, **headers})
        response = conn.getresponse()
        raw = response.read().decode()
        conn.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw


class Callback:
    """The native client's loopback redirect: a tiny HTTP server on 127.0.0.1 that takes /callback's query."""

    def __init__(self):
        received = self.received = queue.Queue()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                parts = urllib.parse.urlsplit(self.path)
                if parts.path != "/callback":
                    self.send_error(404)
                    return
                received.put(dict(urllib.parse.parse_qsl(parts.query)))
                page = b"<!DOCTYPE html><title>Signed in</title><p>You can close this window.</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Browser:
    """Headless Chromium through chromedriver, with a HOME of its own (its NSS database holds what it trusts)."""

    def __init__(self, proxy_address: str, trust_root: Path | None):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.home = Path(tempfile.mkdtemp(prefix="browser-login-"))
        nssdb = self.home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, capture_output=True)
        if trust_root is not None:
            subprocess.run(["certutil", "-A", "-d", f"sql:{nssdb}", "-n", "matrix-deploy lab ACME root", "-t", "C,,",
                            "-i", str(trust_root)], check=True, capture_output=True)  # fmt: skip
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--no-first-run", "--no-default-browser-check", "--window-size=900,1100",
                         f"--user-data-dir={self.home / 'profile'}", "--no-proxy-server",
                         f"--host-resolver-rules=MAP *.lab.test {proxy_address}"):  # fmt: skip
            options.add_argument(argument)
        env = {**os.environ, "HOME": str(self.home), "SE_OFFLINE": "true"}
        service = Service(executable_path=shutil.which("chromedriver"), env=env)
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_page_load_timeout(60)

    def keep(self, name: str) -> Path:
        """A screenshot and the page's source, as artefacts."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        (ARTIFACTS / f"{name}.html").write_text(self.driver.page_source)
        return path

    def close(self):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def host():
    ensure_browser()
    lab.down()
    (lab_host,) = lab.up("single", release=RELEASE, login="root")
    lab_settings(lab_host)
    prepare_release()
    result = pyinfra()
    assert result.returncode == 0, result.stdout[-3000:]
    yield lab_host
    LAB_SETTINGS.unlink(missing_ok=True)
    lab.down()


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def test_element_x_style_oauth_login_in_chromium(host):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    deployment = build(ROOT / "inventories/lab.py")
    username, password = deployment.settings.admin_user, deployment.secrets["admin_password"]
    https = Lab(host.address)
    # Discovery as Element X does it: Synapse's auth_metadata (nginx hands it to MAS).
    status, metadata = https.request("GET", f"https://{PUBLIC_HOST}/_matrix/client/v1/auth_metadata")
    assert status == 200, metadata
    assert metadata["issuer"] == f"https://{MAS_HOST}/" and "S256" in metadata["code_challenge_methods_supported"]

    # The registration policy: a client_uri on the loopback is refused, whatever the client.
    callback = Callback()
    client = {"client_name": "Element X (lab test)", "client_uri": "https://element.lab.test/",
              "application_type": "native", "redirect_uris": [callback.uri], "response_types": ["code"],
              "grant_types": ["authorization_code", "refresh_token"], "token_endpoint_auth_method": "none"}  # fmt: skip
    status, refused = https.request(
        "POST", metadata["registration_endpoint"], {**client, "client_uri": "https://localhost/"}
    )
    assert (status, refused.get("error")) == (400, "invalid_client_metadata"), refused
    status, registered = https.request("POST", metadata["registration_endpoint"], client)
    assert status == 201, registered
    client_id = registered["client_id"]
    assert registered["redirect_uris"] == [callback.uri] and "client_secret" not in registered

    device = "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(10))
    scope = f"openid {UNSTABLE_API} {UNSTABLE_DEVICE}{device}"
    verifier, challenge = _pkce()
    state = secrets.token_urlsafe(16)
    authorize = metadata["authorization_endpoint"] + "?" + urllib.parse.urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": callback.uri, "scope": scope,
        "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
    })  # fmt: skip

    browser = Browser(host.address, https.root)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    try:
        driver = browser.driver
        driver.get(authorize)
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.NAME, "password"), "no login form")
        assert urllib.parse.urlsplit(driver.current_url).netloc == MAS_HOST, driver.current_url
        browser.keep("1-login")
        driver.find_element(By.NAME, "username").send_keys(username)
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.XPATH, "//form[.//input[@name='password']]//button[@type='submit']").click()
        WebDriverWait(driver, 30).until(lambda d: "/consent/" in d.current_url, "no consent page after signing in")
        browser.keep("2-consent")
        assert f"@{username}:lab.test" in driver.page_source and "Element X (lab test)" in driver.page_source
        driver.find_element(By.XPATH, "//button[normalize-space()='Continue']").click()
        answer = callback.received.get(timeout=30)
        WebDriverWait(driver, 30).until(lambda d: d.current_url.startswith(callback.uri), "not back at the client")
        browser.keep("3-callback")
    except BaseException:
        try:
            shot = browser.keep("failure")
            print(f"browser artefacts (screenshots, page sources): {ARTIFACTS} (last: {shot})")
        finally:
            browser.close()
            callback.close()
        raise
    browser.close()
    callback.close()
    where = f"(screenshots in {ARTIFACTS})"
    assert answer.get("state") == state and "code" in answer, (answer, where)

    # The code, with a wrong verifier first: PKCE refuses it (and the code stays usable for the right one).
    token = metadata["token_endpoint"]
    exchange = {"grant_type": "authorization_code", "code": answer["code"], "redirect_uri": callback.uri,
                "client_id": client_id}  # fmt: skip
    status, wrong = https.request("POST", token, {**exchange, "code_verifier": _pkce()[0]}, form=True)
    assert (status, wrong) == (400, {"error": "invalid_grant",
                                     "error_description": "PKCE verification failed: challenge verification failed"}), where  # fmt: skip
    status, tokens = https.request("POST", token, {**exchange, "code_verifier": verifier}, form=True)
    assert status == 200, (tokens, where)
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] > 0, tokens
    assert set(tokens["scope"].split()) == set(scope.split()), tokens
    status, again = https.request("POST", token, {**exchange, "code_verifier": verifier}, form=True)
    assert (status, again.get("error")) == (400, "invalid_grant"), "a code is good once"

    # Matrix through nginx: the device is the scope's.
    whoami = f"https://{PUBLIC_HOST}/_matrix/client/v3/account/whoami"
    status, me = https.request("GET", whoami, headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert (status, me.get("user_id"), me.get("device_id")) == (200, f"@{username}:lab.test", device), me
    status, devices = https.request("GET", f"https://{PUBLIC_HOST}/_matrix/client/v3/devices",
                                    headers={"Authorization": f"Bearer {tokens['access_token']}"})  # fmt: skip
    assert status == 200 and device in {d["device_id"] for d in devices["devices"]}, devices

    # Refresh: a new pair that works, the old refresh token spent.
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": client_id}
    status, renewed = https.request("POST", token, refresh, form=True)
    assert status == 200, renewed
    assert renewed["access_token"] != tokens["access_token"] and renewed["refresh_token"] != tokens["refresh_token"]
    status, me = https.request("GET", whoami, headers={"Authorization": f"Bearer {renewed['access_token']}"})
    assert (status, me.get("device_id")) == (200, device), me
    status, spent = https.request("POST", token, refresh, form=True)
    assert (status, spent.get("error")) == (400, "invalid_grant"), spent


def test_chromium_refuses_the_lab_without_its_acme_root(host):
    """TLS is verified: without the lab's root in its NSS database, Chromium shows a certificate error."""
    browser = Browser(host.address, trust_root=None)
    try:
        browser.driver.get(f"https://{MAS_HOST}/login")
        source = browser.driver.page_source
        assert "ERR_CERT_AUTHORITY_INVALID" in source or "Your connection is not private" in source, browser.keep(
            "untrusted"
        )
        assert 'name="password"' not in source
    finally:
        browser.close()
