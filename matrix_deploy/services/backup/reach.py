"""Whether each host with data can use the backups' repository, asked in the run's first look at the host
(host_state's probes), so that a repository it cannot reach is refused before anything changes: a malformed
setting never gets this far (options.py refuses it before any host is contacted).

- SFTP: an SFTP session to the server as root (its SSH key and known_hosts, as restic's backups will open it),
  within a timeout: an address that does not answer, a refused key or an unknown host key are refused.
- A local directory: it must be missing, empty or a restic repository (restic makes one on the first backup).
- An existing repository and the store's password already on the host: `restic cat config` must open it (the
  store is of another deployment otherwise; without a lock or a cache: nothing is written). A repository not
  made yet is not an error.
"""

import shlex

from matrix_deploy.services.backup.options import SFTP
from matrix_deploy.services.backup.paths import PASSWORD_FILE

PROBE = "backup_repository"
CONNECT_TIMEOUT = 10  # seconds; an SFTP server that does not answer within it is unreachable


def probe(repository: str, password_file: str = PASSWORD_FILE) -> str:
    """Shell printing `ok`, or `refused<TAB>what is wrong`: for host_state's probes, so it always exits 0."""
    q = shlex.quote
    env = f"RESTIC_REPOSITORY={q(repository)} RESTIC_PASSWORD_FILE={q(password_file)}"
    # restic's answer for a repository that opens with no key for this password (0.14 to 0.18).
    opened = (
        f"if [ -f {q(password_file)} ] && command -v restic >/dev/null; then"
        f" out=$({env} restic --no-cache --no-lock cat config 2>&1 >/dev/null)"
        ' || case "$out" in *"wrong password"*|*"no key found"*) refuse "the repository is there but the secrets'
        " store's backup_password does not open it (a repository of another deployment?)\";; esac; fi"
    )
    refuse = 'refuse() { printf "refused\\t%s\\n" "$*"; exit 0; }'
    match = SFTP.match(repository)
    if match:
        target = f"{match['user']}@{match['host']}"
        return (
            f"({refuse}\n"
            "command -v sftp >/dev/null || refuse 'this host has no SFTP client (Debian: openssh-client)'\n"
            f"out=$(echo pwd | sftp -q -b - -o BatchMode=yes -o ConnectTimeout={CONNECT_TIMEOUT} {q(target)}"
            ' 2>&1 >/dev/null) || refuse "no SFTP session as root to'
            f' {target} ($(printf %s "$out" | tr -s "\\t\\r\\n" "   " | sed "s/ *$//" | tail -c 300))"\n'
            f"{opened}\necho ok)"
        )
    r = q(repository)
    return (
        f"({refuse}\n"
        f"if [ -e {r} ] && [ ! -d {r} ]; then refuse 'it is not a directory on this host'; fi\n"
        f'if [ -d {r} ] && [ ! -f {r}/config ] && [ -n "$(ls -A {r})" ]; then'
        " refuse 'the directory holds files but no restic repository (no config file)'; fi\n"
        f"{opened}\necho ok)"
    )


def problem(host: str, repository: str, lines: list[str]) -> str | None:
    """The refusal's message for the probe's output `lines` on `host`, or None when the repository is usable."""
    if lines == ["ok"]:
        return None
    refused = [line.partition("\t")[2] for line in lines if line.startswith("refused\t")]
    what = refused[0] if refused else f"the check gave no answer ({' '.join(lines)[:300] or 'no output'})"
    expected = (
        "an SFTP server root on each host with data reaches with its SSH key, without a prompt, and whose host key"
        " is in root's known_hosts"
        if SFTP.match(repository)
        else "a directory on the host that is missing, empty or a restic repository"
    )
    return (
        f"{host}: backup_repository = {repository!r}: {what}; nothing was changed. Expected {expected}, "
        "of this deployment (its password is the secrets store's backup_password)."
    )
