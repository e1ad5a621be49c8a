"""Secret files on hosts: uploaded over SFTP, never diffed, never on a command line."""

import hashlib
from io import BytesIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation
from pyinfra.facts.files import File, Sha1File
from pyinfra.operations.util import files as file_utils


@operation()
def secret_file(path: str, content: str, user: str, group: str, mode: str = "400"):
    """
    Make `path` hold `content`, owned by `user`:`group` with `mode`.

    Unlike files.put, this never prints a diff (not even with --diff) and names no content in
    its output. Put the file in a directory closed to others: SFTP creates it before the chmod.
    """
    data = content.encode()
    remote = host.get_fact(File, path=path)
    if not remote or host.get_fact(Sha1File, path=path) != hashlib.sha1(data).hexdigest():
        yield FileUploadCommand(BytesIO(data), path)
        yield file_utils.chown(path, user, group)
        yield file_utils.chmod(path, mode)
        return
    owner_ok = remote["user"] == user and remote["group"] == group
    if not owner_ok:
        yield file_utils.chown(path, user, group)
    if remote["mode"] != int(mode):
        yield file_utils.chmod(path, mode)
    elif owner_ok:
        host.noop(f"secret file {path} is up to date")
