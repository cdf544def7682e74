import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

# kit.py (the fixture builders) sits beside the tests.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (for a store or a spool to fill); grow(size) frees space by making it bigger."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)], check=True)

    def grow(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)
    try:
        yield SimpleNamespace(path=mnt, grow=grow)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
