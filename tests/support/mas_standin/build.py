"""Builds the MAS stand-in release tarball, laid out like the real `mas-cli-x86_64-linux.tar.gz`.

Test double for matrix-authentication-service: the real MAS release cannot be downloaded on these
machines; this stand-in lives under tests/, is never selected or shipped by the product, and
implements only what the deployment and the end-to-end tests touch.

    python tests/support/mas_standin/build.py OUTDIR [--version 1.22.0]   # prints the tarball's path and sha256
    from tests.support.mas_standin.build import build; path, sha256 = build(outdir, "1.22.0")

The archive holds, at its root, `mas-cli` (an executable Python zipapp for Debian 12's
/usr/bin/python3, standard library only on the host) and `share/` (assets/, manifest.json,
policy.wasm, templates/, translations/: small placeholders, as MAS looks for them under ./share).
The zipapp carries the `mas_standin` package, MAS 1.22.0's config schema (read at build time from
the `shared` directory beside the repository: ../shared/mas/config.schema.json) and the pure-Python
parts of pinned wheels (PyYAML without its C extension, fastjsonschema, pg8000, scramp, asn1crypto,
python-dateutil, six), each checked against its sha256. Wheels are cached in
~/.cache/matrix-deploy/standin-wheels, so rebuilds are offline and fast.

The archive is byte-for-byte reproducible: sorted entries, fixed timestamps, owners and modes, and a
gzip header without a time or name, so the same sources give the same sha256.
"""

import argparse
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE / "mas_standin"
SCHEMA = Path(__file__).resolve().parents[3] / ".." / "shared" / "mas" / "config.schema.json"
CACHE = Path.home() / ".cache" / "matrix-deploy" / "standin-wheels"
# (requirement, wheel file, sha256); PyYAML is its CPython 3.11 x86_64 wheel, of which only the
# pure-Python `yaml` package is kept (PyYAML falls back to it when the C extension is absent).
WHEELS = [
    ("asn1crypto==1.5.1", "asn1crypto-1.5.1-py2.py3-none-any.whl",
     "db4e40728b728508912cbb3d44f19ce188f218e9eba635821bb4b68564f8fd67"),
    ("fastjsonschema==2.22.3", "fastjsonschema-2.22.3-py3-none-any.whl",
     "f670b443830b75aca3f00b75949efa20f4b2a80302ec7a21505c28dd54cffd43"),
    ("pg8000==1.31.6", "pg8000-1.31.6-py3-none-any.whl",
     "1ffe27af94fa5b37ce6885b98d591dc75562ff076859bf50ca7729af59345a80"),
    ("python-dateutil==2.9.0.post0", "python_dateutil-2.9.0.post0-py2.py3-none-any.whl",
     "a8b2bc7bffae282281c8140a97d3aa9c14da0b136dfe83f850eea9a5f7470427"),
    ("pyyaml==6.0.3", "pyyaml-6.0.3-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
     "b8bb0864c5a28024fac8a632c443c87c5aa6f215c0b126c449ae1a150412f31d"),
    ("scramp==1.5.0", "scramp-1.5.0-py3-none-any.whl",
     "8280608f568e81da9e9c9d69cac1331b836622d9b48bf5c5e400e16129c6d1fa"),
    ("six==1.17.0", "six-1.17.0-py2.py3-none-any.whl",
     "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274"),
]  # fmt: skip
PLATFORM_ARGS = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                 "--platform", "manylinux_2_17_x86_64"]  # fmt: skip
ZIP_DATE = (2025, 1, 1, 0, 0, 0)
TAR_MTIME = 1735689600  # 2025-01-01T00:00:00Z
# An empty but valid WebAssembly module: magic number and version 1.
SHARE = {
    "share/assets/standin.css": b"/* MAS stand-in: placeholder asset */\nbody { font-family: sans-serif; }\n",
    "share/manifest.json": b'{\n  "src/main.tsx": {"file": "standin.css", "isEntry": true}\n}\n',
    "share/policy.wasm": b"\x00asm\x01\x00\x00\x00",
    "share/templates/README.txt": b"Placeholder: the MAS stand-in renders no templates.\n",
    "share/translations/en.json": b'{\n  "_comment": "placeholder: the MAS stand-in has no translations"\n}\n',
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wheels() -> list[Path]:
    """The pinned wheels, from the cache or downloaded once with pip and checked."""
    CACHE.mkdir(parents=True, exist_ok=True)
    found = []
    for requirement, name, sha256 in WHEELS:
        cached = CACHE / name
        if not cached.exists() or _sha256(cached) != sha256:
            with tempfile.TemporaryDirectory() as tmp:
                extra = PLATFORM_ARGS if "-cp311-" in name else []
                subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                     "--dest", tmp, *extra, requirement], check=True,
                )  # fmt: skip
                downloaded = Path(tmp) / name
                if not downloaded.exists():
                    raise SystemExit(
                        f"pip did not download {name} for {requirement}: got {sorted(Path(tmp).iterdir())}"
                    )
                if _sha256(downloaded) != sha256:
                    raise SystemExit(f"{name}: sha256 {_sha256(downloaded)}, expected {sha256}")
                # Atomically: a build running beside this one never reads a half-copied wheel.
                partial = cached.with_name(f".{name}.{os.getpid()}")
                shutil.copyfile(downloaded, partial)
                os.replace(partial, cached)
        found.append(cached)
    return found


def _wheel_members(path: Path) -> dict[str, bytes]:
    """The pure-Python files of a wheel: no compiled extensions, no PyYAML C shim, no RECORD."""
    members = {}
    with zipfile.ZipFile(path) as wheel:
        for name in wheel.namelist():
            if name.endswith("/") or name.endswith((".so", ".pyd", ".pyc")) or name.startswith("_yaml/"):
                continue
            if name.endswith(".dist-info/RECORD"):
                continue
            members[name] = wheel.read(name)
    return members


def zipapp(version: str) -> bytes:
    if not SCHEMA.is_file():
        raise SystemExit(f"MAS config schema not found at {SCHEMA.resolve()} (the `shared` directory beside the repo)")
    files: dict[str, bytes] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" not in path.parts:
            files[f"mas_standin/{path.relative_to(PACKAGE).as_posix()}"] = path.read_bytes()
    files["mas_standin/VERSION"] = f"{version}\n".encode()
    files["mas_standin/config.schema.json"] = SCHEMA.read_bytes()
    for wheel in wheels():
        for name, data in _wheel_members(wheel).items():
            if name.split("/")[0] == "mas_standin" or name == "__main__.py":
                raise SystemExit(f"{wheel.name} would overwrite {name}")
            files[name] = data
    files["__main__.py"] = (
        b'"""mas-cli: the MAS stand-in, a test double (tests/support/mas_standin), not matrix-authentication-service."""\n'
        b"import sys\n\nfrom mas_standin.cli import main\n\nsys.exit(main())\n"
    )
    buffer = io.BytesIO()
    buffer.write(b"#!/usr/bin/python3\n")
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100644 << 16) | 0
            info.create_system = 3
            archive.writestr(info, files[name], compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buffer.getvalue()


def build(outdir: Path, version: str = "1.22.0") -> tuple[Path, str]:
    """Write `mas-cli-x86_64-linux.tar.gz` into `outdir`; return its path and sha256 (hex)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    entries: dict[str, tuple[bytes | None, int]] = {"mas-cli": (zipapp(version), 0o755)}
    for name, data in SHARE.items():
        entries[name] = (data, 0o644)
        parts = name.split("/")
        for depth in range(1, len(parts)):
            entries["/".join(parts[:depth])] = (None, 0o755)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(entries):
            data, mode = entries[name]
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = mode, TAR_MTIME, 0, 0, "root", "root"
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    target = outdir / "mas-cli-x86_64-linux.tar.gz"
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(compressed.getvalue())
    partial.replace(target)
    return target, _sha256(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the MAS stand-in release tarball (a test double).")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--version", default="1.22.0", help="the MAS version the stand-in reports (default 1.22.0)")
    args = parser.parse_args(argv)
    path, sha256 = build(args.outdir, args.version)
    print(f"{path} {sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
