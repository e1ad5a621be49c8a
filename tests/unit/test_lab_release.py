"""Which MAS the lab deploys (matrix_deploy/lab/release.py): MAS_RELEASE first, then for `make lab` the release
downloaded from mas_release_url, trusted on first use and pinned in .lab/, else the stand-in. The "release" here
is served by a loopback HTTP server (no traffic leaves this machine); it is a tarball holding a `mas-cli` file."""

import http.server
import io
import json
import tarfile
import threading

import pytest

from matrix_deploy.lab import LabError, release


def tarball(content: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("mas-cli")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


class Server:
    """Serves `body` at every path on 127.0.0.1 and counts the requests."""

    def __init__(self):
        self.body, self.requests = tarball(b"release one"), []
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                served.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(served.body)))
                self.end_headers()
                self.wfile.write(served.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v{{version}}/mas-cli-x86_64-linux.tar.gz"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def lab(tmp_path, monkeypatch):
    for name in ("MAS_RELEASE", "MAS_RELEASE_SHA256", "MAS_RELEASE_DOWNLOAD", "MAS_RELEASE_VERSION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(release, "LAB_DIR", tmp_path)
    monkeypatch.setattr(release, "RELEASE_JSON", tmp_path / "mas-release.json")
    monkeypatch.setattr(release, "PINS_JSON", tmp_path / "mas-release-pins.json")
    monkeypatch.setattr(release, "DOWNLOADS", tmp_path / "mas-downloads")
    server = Server()
    monkeypatch.setenv("MAS_RELEASE_URL", server.url)
    yield server
    server.stop()


def test_first_download_is_trusted_shown_and_pinned_then_reused_without_the_network(lab, tmp_path, capsys):
    first = release.prepare(may_download=True)
    url = lab.url.replace("{version}", "1.22.0")
    assert (
        first["kind"] == "real" and first["source"] == url and lab.requests == ["/v1.22.0/mas-cli-x86_64-linux.tar.gz"]
    )
    assert f"trusted on first use, sha256 {first['sha256']}" in capsys.readouterr().err
    assert json.loads((tmp_path / "mas-release-pins.json").read_text()) == {url: first["sha256"]}
    assert json.loads((tmp_path / "mas-release.json").read_text()) == first
    lab.stop()  # the pinned, downloaded file is used again: no network needed
    assert release.prepare(may_download=True) == first


def test_a_changed_release_at_the_pinned_url_is_refused(lab, tmp_path):
    first = release.prepare(may_download=True)
    lab.body = tarball(b"release two, same URL")
    (tmp_path / "mas-downloads/1.22.0/mas-cli-x86_64-linux.tar.gz").unlink()
    with pytest.raises(LabError, match=f"not the pinned {first['sha256']}: not deploying it"):
        release.prepare(may_download=True)


def test_a_given_sha256_is_the_pin_from_the_first_download(lab, monkeypatch):
    monkeypatch.setenv("MAS_RELEASE_SHA256", "0" * 64)
    with pytest.raises(LabError, match="not the pinned 0000000000000000"):
        release.prepare(may_download=True)


def test_what_is_not_a_release_is_refused_and_not_pinned(lab, tmp_path):
    lab.body = b"<html>a captive portal</html>"
    with pytest.raises(LabError, match="not a MAS release tarball"):
        release.prepare(may_download=True)
    assert not (tmp_path / "mas-release-pins.json").exists()


def test_no_route_to_the_release_falls_back_to_the_standin_and_says_why(lab, capsys):
    lab.stop()
    chosen = release.prepare(may_download=True)
    assert chosen["kind"] == "stand-in" and chosen["source"].startswith("could not download http://127.0.0.1:")
    assert "using the tests' MAS stand-in" in capsys.readouterr().err


def test_tests_and_download_no_never_reach_out(lab, monkeypatch):
    assert release.prepare()["kind"] == "stand-in"
    monkeypatch.setenv("MAS_RELEASE_DOWNLOAD", "no")
    assert release.prepare(may_download=True)["kind"] == "stand-in"
    assert lab.requests == []


def test_mas_release_wins_over_the_download(lab, tmp_path, monkeypatch):
    given = tmp_path / "given.tar.gz"
    given.write_bytes(tarball(b"built from source"))
    monkeypatch.setenv("MAS_RELEASE", str(given))
    chosen = release.prepare(may_download=True)
    assert (chosen["kind"], chosen["source"], chosen["file"]) == ("real", "MAS_RELEASE", str(given))
    assert lab.requests == []


def test_a_chain_of_versions_is_real_only_when_mas_release_covers_each(lab, tmp_path, monkeypatch):
    """One database through several MAS versions: real MAS cannot migrate the stand-in's schema, nor back."""
    given = tmp_path / "given.tar.gz"
    given.write_bytes(tarball(b"built from source"))
    assert not release.real_for_all({"1.22.0"})
    monkeypatch.setenv("MAS_RELEASE", str(given))
    assert release.real_for_all({"1.22.0"}) and not release.real_for_all({"1.21.0", "1.22.0"})
    chosen = release.prepare("1.22.0", real=False)
    assert chosen["kind"] == "stand-in" and "does not all cover" in chosen["source"]
    assert release.prepare("1.22.0")["kind"] == "real"
