"""Builds the MAS stand-in release tarball, laid out like the real `mas-cli-x86_64-linux.tar.gz`.

Test double for matrix-authentication-service: the real MAS release cannot be downloaded on these
machines; this stand-in lives under tests/, is never selected or shipped by the product, and
implements only what the deployment and the end-to-end tests touch.

The archive holds `mas-cli` (a Python zipapp for the hosts' /usr/bin/python3, with its pure-Python
dependencies and MAS 1.22.0's config schema inside) and `share/`. It is byte-for-byte reproducible,
so rebuilding gives the same sha256. Run: python -m tests.mas_standin.build OUTDIR [--version X]
"""

import argparse
import gzip
import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA = HERE.parents[2] / "shared/mas/config.schema.json"
DEPENDENCIES = ["pg8000==1.31.6", "fastjsonschema==2.22.3", "pyyaml==6.0.3"]
CACHE = (
    Path.home()
    / ".cache/matrix-deploy"
    / ("standin-deps-" + hashlib.sha256(" ".join(DEPENDENCIES).encode()).hexdigest()[:12])
)
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
SHARE = {
    "share/manifest.json": "{}\n",
    "share/policy.wasm": "stand-in\n",
    "share/assets/README": "stand-in assets\n",
    "share/templates/README": "stand-in templates\n",
    "share/translations/en.json": "{}\n",
}


def _dependencies() -> Path:
    if not (CACHE / ".complete").exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile", "--no-warn-conflicts",
             "--target", str(CACHE), *DEPENDENCIES], check=True,
        )  # fmt: skip
        (CACHE / ".complete").touch()
    return CACHE


def _zipapp(version: str) -> bytes:
    buffer = io.BytesIO()
    buffer.write(b"#!/usr/bin/python3\n")
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as z:

        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, data)

        add("__main__.py", b"import sys\nfrom mas_cli import main\nsys.exit(main())\n")
        add("mas_cli.py", (HERE / "mas_cli.py").read_bytes())
        add("config.schema.json", SCHEMA.read_bytes())
        add("VERSION", f"{version}\n".encode())
        deps = _dependencies()
        for path in sorted(deps.rglob("*")):
            rel = path.relative_to(deps).as_posix()
            top = rel.split("/")[0]
            # dist-info stays: scramp reads its own version from its metadata.
            if (
                path.is_file()
                and top not in ("bin", ".complete")
                and "__pycache__" not in rel
                and not rel.endswith(".so")
            ):
                add(rel, path.read_bytes())
    return buffer.getvalue()


def build(outdir: Path, version: str = "1.22.0") -> tuple[Path, str]:
    """Write the release tarball into `outdir`; return its path and sha256."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:

        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = (
                len(data),
                mode,
                0,
                0,
                0,
                "",
                "",
            )
            tar.addfile(info, io.BytesIO(data))

        add("mas-cli", _zipapp(version), 0o755)
        for name, content in sorted(SHARE.items()):
            add(name, content.encode())
    target = outdir / "mas-cli-x86_64-linux.tar.gz"
    target.write_bytes(gzip.compress(raw.getvalue(), mtime=0))
    return target, hashlib.sha256(target.read_bytes()).hexdigest()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--version", default="1.22.0")
    args = parser.parse_args()
    path, sha256 = build(args.outdir, args.version)
    print(f"{path} {sha256}")
