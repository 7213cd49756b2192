"""`sd ext new NAME --lang rust|c`: a scaffold that builds, installs as is and runs its job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, ROOT, Daemon

from daemon.errors import InvalidParams
from rpc.scaffold import scaffold


def sd_new(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "sd"), "ext", "new", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


@pytest.mark.parametrize("lang", ["rust", "c"])
def test_scaffold_builds_installs_and_runs(daemon: Daemon, tmpdir_short: Path, lang: str) -> None:
    name = f"new-{lang}"
    r = subprocess.run([str(BIN / "sd"), "--json", "ext", "new", name, "--lang", lang,
                        "--dir", str(tmpdir_short / "src")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    ext = Path(made["path"])
    stem = name.replace("-", "_")
    expected = {"rust": ["Cargo.toml", "manifest.json", "src/lib.rs", f"test_{stem}.py"],
                "c": ["manifest.json", f"{stem}.c", f"test_{stem}.py"]}[lang]
    assert made["files"] == expected and all((ext / f).is_file() for f in expected)

    # Built by the project's build script, installed unchanged, the job run in the daemon.
    out = tmpdir_short / "built"
    subprocess.run(["bash", str(ROOT / "scripts" / "build-extensions.sh"), "-q", str(ext),
                    "--out", str(out)], check=True, timeout=1800)
    r = daemon.sd("ext", "install", str(out / name))
    assert r.returncode == 0 and f"{name} 0.1.0: loaded; jobs: count" in r.stdout, r.stderr
    lib = daemon.sd_json("library", "create", "L")["id"]
    job = daemon.sd_json("job", "run", name, "count", "--state", '{"target": 30}')["job_id"]
    info = daemon.watch_job(job, lib)
    assert info["output"] == {"current": 30, "target": 30} and info["items"] == 30
    r = daemon.sd("job", "run", name, "count", "--state", '{"current": 1}', "--wait")
    assert r.returncode == 4  # no target: a clear failure
    assert not (ROOT / "build" / "extensions" / name).exists()  # --out kept the build tree clean

    # Its own test passes as generated.
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(ext / f"test_{stem}.py")], capture_output=True, text=True,
                       cwd=tmpdir_short, timeout=1800)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr


def fake_tree(tmp: Path) -> Path:
    """The parts of the sd tree a scaffold and the build script touch."""
    root = tmp / "sd"
    for d in ("scripts", "guest-sdk"):
        shutil.copytree(ROOT / d, root / d, ignore=shutil.ignore_patterns("target"))
    for f in ("Cargo.toml", "Cargo.lock"):
        shutil.copy(ROOT / f, root / f)
    shutil.copytree(ROOT / "extensions", root / "extensions")
    return root


def test_in_the_source_tree_c_joins_the_workspace_exclude(tmpdir_short: Path) -> None:
    root = fake_tree(tmpdir_short)
    dest, _, note = scaffold("in-tree-c", "c", root / "extensions", root)
    assert note and '"extensions/in-tree-c"' in (root / "Cargo.toml").read_text()
    assert '"extensions/c-counter"' in (root / "Cargo.toml").read_text()  # kept
    # The tree's build script accepts it (it checks the exclude) and builds it.
    env = {**os.environ, "SD_PYTHON": sys.executable}
    subprocess.run(["bash", str(root / "scripts" / "build-extensions.sh"), "-q", str(dest)],
                   check=True, env=env, timeout=600)
    assert (root / "build" / "extensions" / "in-tree-c" / "in_tree_c.wasm").stat().st_size > 1000
    # Cargo still reads the workspace (a C directory would break the members glob).
    subprocess.run(["/usr/bin/cargo", "metadata", "--offline", "--no-deps", "--format-version", "1"],
                   cwd=root, check=True, capture_output=True,
                   env={**os.environ, "CARGO_HOME": str(ROOT / "build" / "cargo-home")})


def test_in_the_source_tree_rust_is_a_workspace_member(tmpdir_short: Path) -> None:
    root = fake_tree(tmpdir_short)
    dest, _, note = scaffold("in-tree-rust", "rust", root / "extensions", root)
    cargo = (dest / "Cargo.toml").read_text()
    assert note is None and 'path = "../../guest-sdk"' in cargo and "[workspace]" not in cargo
    meta = subprocess.run(["/usr/bin/cargo", "metadata", "--offline", "--no-deps",
                           "--format-version", "1"], cwd=root, check=True, capture_output=True,
                          text=True, env={**os.environ, "CARGO_HOME": str(ROOT / "build" / "cargo-home")})
    assert "in-tree-rust" in {p["name"] for p in json.loads(meta.stdout)["packages"]}


def test_refusals(tmpdir_short: Path) -> None:
    r = sd_new("Bad_Name", "--dir", str(tmpdir_short))
    assert r.returncode != 0 and "must match [a-z0-9][a-z0-9-]*" in r.stderr
    r = sd_new("ok", "--lang", "go", "--dir", str(tmpdir_short))
    assert r.returncode == 2 and "'go' is not one of 'rust', 'c'" in r.stderr
    assert sd_new("twice", "--dir", str(tmpdir_short)).returncode == 0
    r = sd_new("twice", "--lang", "c", "--dir", str(tmpdir_short))
    assert r.returncode != 0 and "already exists" in r.stderr
    with pytest.raises(InvalidParams, match="already exists"):
        scaffold("twice", "c", tmpdir_short, ROOT)


def test_default_directory_is_extensions_when_there_is_one(tmpdir_short: Path) -> None:
    (tmpdir_short / "extensions").mkdir()
    assert sd_new("here", "--lang", "c", cwd=tmpdir_short).returncode == 0
    assert (tmpdir_short / "extensions" / "here" / "manifest.json").is_file()
    assert sd_new("there", "--lang", "c", cwd=tmpdir_short / "extensions").returncode == 0
    assert (tmpdir_short / "extensions" / "there" / "there.c").is_file()
