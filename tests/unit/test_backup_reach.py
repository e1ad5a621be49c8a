"""The check that each host with data can use the backups' repository (services/backup/reach.py), run here with
sh: its shell against a fake SFTP client and local directories, and the refusal's message."""

import stat
import subprocess

import pytest

from matrix_deploy.services.backup import reach

SFTP_REPOSITORY = "sftp:backup@backup.example.org:/srv/restic"


def run_probe(repository: str, tmp_path, sftp: str | None = None, restic: str | None = None) -> list[str]:
    """The probe's output lines, with `sftp` (a shell script body) as the only SFTP client on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("sh", "tr", "sed", "tail", "ls", "printf", "cat"):
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        if found.startswith("/") and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    if sftp is not None:
        fake = bin_dir / "sftp"
        fake.write_text(f"#!/bin/sh\ncat >/dev/null\n{sftp}\n")
        fake.chmod(stat.S_IRWXU)
    password_file = tmp_path / "backup-password"
    if restic is not None:
        fake = bin_dir / "restic"
        fake.write_text(f"#!/bin/sh\n{restic}\n")
        fake.chmod(stat.S_IRWXU)
        password_file.write_text("not the password\n")
    out = subprocess.run(["/bin/sh", "-c", reach.probe(repository, str(password_file))], capture_output=True, text=True,
                         env={"PATH": str(bin_dir)}, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_an_sftp_server_that_does_not_answer_is_refused_with_what_and_what_is_expected(tmp_path):
    lines = run_probe(SFTP_REPOSITORY, tmp_path,
                      "echo 'ssh: connect to host backup.example.org port 22: Connection timed out' >&2\n"
                      "echo 'Connection closed' >&2; exit 255")  # fmt: skip
    assert lines == ["refused\tno SFTP session as root to backup@backup.example.org (ssh: connect to host "
                     "backup.example.org port 22: Connection timed out Connection closed)"]  # fmt: skip
    message = reach.problem("db1", SFTP_REPOSITORY, lines)
    assert message.startswith(f"db1: backup_repository = {SFTP_REPOSITORY!r}: no SFTP session as root to ")
    assert "Connection timed out" in message and "nothing was changed" in message
    assert "Expected an SFTP server root on each host with data reaches with its SSH key" in message


def test_the_sftp_session_is_asked_for_without_prompts_and_within_a_timeout(tmp_path):
    lines = run_probe(SFTP_REPOSITORY, tmp_path, 'echo "$*" >&2; exit 1')
    assert "-o BatchMode=yes" in lines[0] and f"-o ConnectTimeout={reach.CONNECT_TIMEOUT}" in lines[0], lines
    assert lines[0].endswith("backup@backup.example.org)"), lines


def test_a_host_without_an_sftp_client_is_refused(tmp_path):
    lines = run_probe(SFTP_REPOSITORY, tmp_path)
    assert lines == ["refused\tthis host has no SFTP client (Debian: openssh-client)"]


def test_a_reachable_sftp_server_is_accepted(tmp_path):
    lines = run_probe(SFTP_REPOSITORY, tmp_path, "exit 0")
    assert lines == ["ok"]
    assert reach.problem("db1", SFTP_REPOSITORY, lines) is None


@pytest.mark.parametrize("kind", ["missing", "empty", "repository"])
def test_a_local_directory_that_is_missing_empty_or_a_repository_is_accepted(tmp_path, kind):
    directory = tmp_path / "restic"
    if kind != "missing":
        directory.mkdir()
    if kind == "repository":
        (directory / "config").write_text("restic")
        (directory / "data").mkdir()
    assert run_probe(str(directory), tmp_path) == ["ok"]


def test_a_local_directory_with_other_files_or_a_file_is_refused(tmp_path):
    directory = tmp_path / "restic"
    directory.mkdir()
    (directory / "something else").write_text("")
    lines = run_probe(str(directory), tmp_path)
    assert lines == ["refused\tthe directory holds files but no restic repository (no config file)"]
    message = reach.problem("lab1", str(directory), lines)
    assert "Expected a directory on the host that is missing, empty or a restic repository" in message
    (tmp_path / "file").write_text("")
    assert run_probe(str(tmp_path / "file"), tmp_path) == ["refused\tit is not a directory on this host"]


def test_no_answer_at_all_is_not_taken_for_ok():
    assert "the check gave no answer (no output)" in reach.problem("db1", SFTP_REPOSITORY, [])
    assert reach.problem("db1", SFTP_REPOSITORY, ["ok", "ok"]) is not None


def test_an_existing_repository_the_stores_password_does_not_open_is_refused(tmp_path):
    directory = tmp_path / "restic"
    directory.mkdir()
    (directory / "config").write_text("restic")
    wrong = 'echo "Fatal: wrong password or no key found" >&2; exit 12'
    lines = run_probe(str(directory), tmp_path, restic=wrong)
    assert lines == ["refused\tthe repository is there but the secrets store's backup_password does not open it (a "
                     "repository of another deployment?)"]  # fmt: skip
    # restic's own flags: nothing written on the host by the check (no lock, no cache).
    lines = run_probe(str(directory), tmp_path, restic='echo "$*" >&2; exit 1')
    assert lines == ["ok"]
    assert "--no-cache --no-lock cat config" in reach.probe(str(directory))


def test_a_repository_not_made_yet_is_not_an_error(tmp_path):
    missing = 'echo "Fatal: unable to open config file: Is there a repository at the following location?" >&2; exit 10'
    assert run_probe(SFTP_REPOSITORY, tmp_path, sftp="exit 0", restic=missing) == ["ok"]
