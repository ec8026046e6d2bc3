"""Real package databases for tests: dpkg status stanzas, and an rpmdb.sqlite made by the real ``rpm``.

``rpm_root`` builds small noarch packages with ``rpmbuild`` (Debian's ``rpm`` package) and installs
them into a scratch root with ``rpm --root ... --dbpath /var/lib/rpm``, the way an RPM distribution's
installer fills its database; ``need`` skips locally and fails under CI=true when ``rpm`` is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import need

DPKG_STATUS = "var/lib/dpkg/status"


def dpkg_stanza(name: str, version: str, status: str = "install ok installed", arch: str = "amd64") -> str:
    return (f"Package: {name}\nStatus: {status}\nPriority: optional\nSection: misc\nInstalled-Size: 10\n"
            f"Maintainer: Test <t@example.invalid>\nArchitecture: {arch}\nVersion: {version}\n"
            f"Description: {name}\n a test package\n .\n with a long description\n\n")


def write_dpkg(root: Path, packages: dict[str, str]) -> Path:
    path = root / DPKG_STATUS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(dpkg_stanza(n, v) for n, v in packages.items()))
    return path


def need_rpm() -> None:
    need(shutil.which("rpm") is not None and shutil.which("rpmbuild") is not None,
         "rpm and rpmbuild (Debian package rpm) are needed to make a real rpmdb.sqlite")


def build_rpm(work: Path, name: str, version: str, release: str, epoch: int | None = None) -> Path:
    """A real noarch RPM with no files, built by rpmbuild."""
    top = work / "rpmbuild"
    spec = work / f"{name}-{version}-{release}.spec"
    spec.write_text(f"Name: {name}\nVersion: {version}\nRelease: {release}\n"
                    + (f"Epoch: {epoch}\n" if epoch is not None else "")
                    + "Summary: test\nLicense: MIT\nBuildArch: noarch\n%description\ntest\n%files\n")
    subprocess.run(["rpmbuild", "--define", f"_topdir {top}", "--quiet", "-bb", str(spec)], check=True,
                   capture_output=True)
    return next((top / "RPMS/noarch").glob(f"{name}-{version}-{release}.noarch.rpm"))


def rpm_cmd(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rpm", "--root", str(root), "--define", "_dbpath /var/lib/rpm", "--define",
                           "_db_backend sqlite", *argv], check=True, capture_output=True, text=True)


def rpm_root(root: Path, work: Path, packages: list[tuple[str, str, str, int | None]]) -> Path:
    """``root`` with an RPM database (var/lib/rpm/rpmdb.sqlite) holding ``packages`` (name, version, release, epoch)."""
    need_rpm()
    work.mkdir(parents=True, exist_ok=True)
    rpm_cmd(root, "--initdb")
    for name, version, release, epoch in packages:
        rpm_cmd(root, "-i", "--nodeps", "--noscripts", "--justdb", str(build_rpm(work, name, version, release, epoch)))
    return root / "var/lib/rpm/rpmdb.sqlite"


def rpm_installed(root: Path) -> dict[str, str]:
    """What the real rpm says is installed (``rpm -qa``), in driftd's ``[epoch:]version-release`` form."""
    out = rpm_cmd(root, "-qa", "--qf", "%{NAME} %|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\n").stdout
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        name, evr = line.split(" ", 1)
        found.setdefault(name, []).append(evr)
    return {n: ", ".join(sorted(v)) for n, v in found.items()}
