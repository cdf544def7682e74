"""The built wheel, installed into a fresh virtualenv, works without the checkout.

Everything else in tests/ runs against the editable install, which sees the whole checkout; a
file missing from the package data (the example config, auditd's rules, the units) passes
there and fails for every user. So: build the wheel from a copy of the sources, install it
with its dependencies (from the package index, as a user would) into a new venv, and run the
installed commands from an empty directory, checking that what runs is the venv's copy.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
# the sources a wheel is built from; tests, docs and benchmarks are not in it
NOT_BUILT = (".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", "tests", "docs", "bench")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """(the venv's bin directory, an empty working directory, the environment to run in)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    # a copy: pip builds in the source tree (build/, egg-info), and the checkout stays clean
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(*NOT_BUILT))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
                            "--wheel-dir", str(base / "dist"), str(src)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    wheel, = (base / "dist").glob("whodid-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    bin_dir = base / "venv" / "bin"
    installed = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
                                "--disable-pip-version-check", str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    work = base / "work"                       # no whodid/ here to import from by accident
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "WHODID_CONFIG", "WHODID_DB", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HOME=str(base / "home"), XDG_DATA_HOME=str(base / "home" / "data"),
               PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    return bin_dir, work, env, wheel


def run(venv, *argv, stdin=None):
    bin_dir, work, env, _ = venv
    return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], cwd=work, env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_what_runs_is_the_installed_package(venv):
    bin_dir = venv[0]
    where = run(venv, "python", "-c", "import whodid, whodid.agent, whodid.bot; "
                "print(whodid.__file__); print(whodid.agent.__file__); print(whodid.bot.__file__)")
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).is_relative_to(bin_dir.parent / "lib"), path
        assert not Path(path).is_relative_to(ROOT), path


def test_the_wheel_holds_every_file_a_message_points_to(venv):
    import zipfile
    names = set(zipfile.ZipFile(venv[3]).namelist())
    wanted = {"whodid/share/config.example.yaml", "whodid/agent/audit.rules", "whodid/bot/slack/manifest.yml",
              "whodid/agent/capture.c"}
    wanted |= {f"whodid/share/systemd/{unit.name}" for unit in (ROOT / "deploy" / "systemd").glob("*.service")}
    assert wanted <= names, wanted - names


def test_help_and_versions(venv):
    for argv, words in ((["whodid", "--help"], "Trace commands back"), (["whodid", "--version"], "whodid 0.1.0"),
                        (["whodid-agent", "--help"], "doctor"), (["whodid-agent", "--version"], "whodid-agent 0.1.0")):
        out = run(venv, *argv)
        assert out.returncode == 0 and words in out.stdout, (argv, out.stderr)


def test_the_example_config_is_printed_and_checks_ok(venv):
    example = run(venv, "whodid", "config", "example")
    assert example.returncode == 0, example.stderr
    assert example.stdout == (ROOT / "config.example.yaml").read_text()
    path = venv[1] / "config.yaml"
    path.write_text(example.stdout)
    checked = run(venv, "whodid", "config", "check", str(path))
    assert checked.returncode == 0 and checked.stdout.startswith(f"ok: {path}: sections "), checked
    path.write_text(example.stdout.replace("  limit: 5\n", "  limit: five\n", 1))
    checked = run(venv, "whodid", "config", "check", str(path))
    assert checked.returncode == 2 and "`trace.limit` must be a whole number" in checked.stdout, checked


def test_the_shipped_files_come_from_the_venv(venv):
    bin_dir = venv[0]
    listing = run(venv, "whodid", "files")
    assert listing.returncode == 0, listing.stderr
    for name in ("config.example.yaml", "audit.rules", "manifest.yml"):
        where = run(venv, "whodid", "files", name, "--path").stdout.strip()
        assert Path(where).is_relative_to(bin_dir.parent) and Path(where).is_file(), where
        assert where in listing.stdout
    rules = run(venv, "whodid-agent", "audit-rules")
    assert rules.returncode == 0 and rules.stdout == (ROOT / "agent" / "audit.rules").read_text()


def test_doctor_says_what_it_found_without_crashing(venv):
    """doctor's contract: 0 ready, 1 problems to fix (each with its fix) - never a traceback."""
    doctor = run(venv, "whodid-agent", "doctor")
    assert doctor.returncode in (0, 1), doctor
    assert "Traceback" not in doctor.stderr
    last = doctor.stdout.strip().splitlines()[-1]
    assert last == "ready" if doctor.returncode == 0 else last.endswith("problem(s) to fix"), doctor.stdout


def test_the_demo_runs_from_the_wheel(venv):
    db = venv[1] / "demo.db"
    demo = run(venv, "whodid", "demo", "--db", str(db))
    assert demo.returncode == 0, demo.stderr
    assert "Building the demo store" in demo.stdout and "Who:  jim - ssh publickey" in demo.stdout
    traced = run(venv, "whodid", "trace", "--db", str(db), "delete-cluster", "--json")
    assert traced.returncode == 0, traced.stderr
    assert json.loads(traced.stdout)["matches"][0]["attributed_to"]["user"] == "jim"
