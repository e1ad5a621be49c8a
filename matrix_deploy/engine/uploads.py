"""Files uploaded to hosts (secret or not): over SFTP, never diffed here, never on a command line, never readable
by others on the way.

The upload goes, as the login user, into a directory only that user can read (host_state's upload_dir: the sudo
user's, or root's under /var/lib/matrix-deploy), then one command copies it beside its target (`<path>.upload`,
in the same directory, which must be closed to other users: every secrets directory is), gives it its owner and
mode and renames it into place. Two round trips per file: pyinfra's own files.put asks the host about the file
first and, through sudo, stages the upload in /tmp (readable by every local user).
"""

import hashlib
import posixpath
import shlex
from io import BytesIO

from pyinfra.api import FileUploadCommand, StringCommand, operation

from matrix_deploy.engine.paths import STATE, UPLOAD_DIR

# Shell that makes the directory only the login user can read, for uploads and downloads (with sudo, pyinfra would
# stage them in /tmp, readable by every local user), and sets $dir to it: the sudo user's, or root's in the state
# directory.
LOGIN_UPLOAD_DIR = (
    'if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then'
    ' home=$(getent passwd "$SUDO_USER" | cut -d: -f6); dir="$home/"' + shlex.quote(UPLOAD_DIR) + ";"
    ' install -d -m 700 -o "$SUDO_USER" -g "$(id -g "$SUDO_USER")" "$dir";'
    f' else dir={shlex.quote(STATE + "/uploads")}; install -d -m 700 "$dir"; fi'
)


@operation()
def secret_file(path: str, content: str, user: str | None, group: str | None, mode: str | None = "400",
                upload_dir: str = ""):  # fmt: skip
    """
    Make `path` hold `content`, owned by `user`:`group` with `mode` (None: root's, 0644).

    Added only where host_state found `path` not as wanted, so it uploads without asking the host again.
    Unlike files.put, this never prints a diff (not even with --diff) and names no content in its output.
    """
    temp = f"{upload_dir}/{hashlib.sha1(path.encode()).hexdigest()}"
    staged = f"{path}.upload"
    # As the login user: the directory is that user's (sudo would stage it in /tmp first).
    yield FileUploadCommand(BytesIO(content.encode()), temp, _sudo=False)
    p, t, s = shlex.quote(path), shlex.quote(temp), shlex.quote(staged)
    command = f"mkdir -p {shlex.quote(posixpath.dirname(path))} && (umask 077 && cp {t} {s}) && rm -f {t}"
    if user or group:
        command += f" && chown {shlex.quote(user + ':' + group if user and group else user or ':' + group)} {s}"
    yield StringCommand(f"{command} && chmod {mode or '644'} {s} && mv -f {s} {p}")
