"""Secret files on hosts: uploaded over SFTP, never diffed, never on a command line, never readable by others.

The upload lands beside its target (`<path>.upload`, in the same directory, which must be closed to
other users: every secrets directory is) and only then gets its owner and mode and is renamed into
place. Logged in as a sudo user, pyinfra first stages the upload in a temporary file: host_state
gives it a directory only that user can read (pyinfra's default, /tmp, is readable by everyone).
"""

import hashlib
from io import BytesIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.api.command import QuoteString
from pyinfra.facts.files import File, Sha1File
from pyinfra.operations.util import files as file_utils


@operation()
def secret_file(path: str, content: str, user: str, group: str, mode: str = "400", upload_dir: str | None = None):
    """
    Make `path` hold `content`, owned by `user`:`group` with `mode`.

    Unlike files.put, this never prints a diff (not even with --diff) and names no content in
    its output. `upload_dir`: where a sudo upload is staged (a directory only the login user reads).
    """
    data = content.encode()
    remote = host.get_fact(File, path=path)
    if not remote or host.get_fact(Sha1File, path=path) != hashlib.sha1(data).hexdigest():
        staged = f"{path}.upload"
        temp = f"{upload_dir}/{hashlib.sha1(path.encode()).hexdigest()}" if upload_dir else None
        yield FileUploadCommand(BytesIO(data), staged, remote_temp_filename=temp)
        # One command (one round trip): owner and mode first, then renamed into place.
        yield StringCommand("chown", f"{user}:{group}", QuoteString(staged), "&&", "chmod", mode, QuoteString(staged),
                            "&&", "mv", "-f", QuoteString(staged), QuoteString(path))  # fmt: skip
        return
    owner_ok = remote["user"] == user and remote["group"] == group
    if not owner_ok:
        yield file_utils.chown(path, user, group)
    if remote["mode"] != int(mode):
        yield file_utils.chmod(path, mode)
    elif owner_ok:
        host.noop(f"secret file {path} is up to date")
