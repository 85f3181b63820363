"""Build the double-click app with PyInstaller (one folder):

    uv run --group packaging python packaging/build.py [--clean]

Linux: ``dist/nbdesk/nbdesk``; Windows: ``dist\\nbdesk\\nbdesk.exe``; macOS:
``dist/nbdesk.app``. Work files go to ``build/``. Prints the bundle's size on disk.
The smoke test of the result: ``uv run --group packaging pytest --bundle dist/nbdesk``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "packaging" / "nbdesk.spec"
DIST = ROOT / "dist"
WORK = ROOT / "build" / "pyinstaller"


def bundle_path() -> Path:
    return DIST / "nbdesk.app" if sys.platform == "darwin" else DIST / "nbdesk"


def disk_usage(path: Path) -> int:
    """Bytes the folder takes on disk (allocated blocks where the OS says, like du)."""
    total = 0
    for p in path.rglob("*"):
        if p.is_symlink() or not p.is_file():
            continue
        st = p.stat()
        blocks = getattr(st, "st_blocks", None)
        total += blocks * 512 if blocks is not None else st.st_size
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clean", action="store_true", help="drop PyInstaller's cache first")
    args = p.parse_args(argv)
    cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
           "--distpath", str(DIST), "--workpath", str(WORK), str(SPEC)]
    if args.clean:
        cmd.insert(3, "--clean")
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    t0 = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    if result.returncode != 0:
        print(f"build.py: PyInstaller failed (exit {result.returncode})", file=sys.stderr)
        return result.returncode
    bundle = bundle_path()
    size = disk_usage(bundle)
    print(f"built {bundle.relative_to(ROOT)} in {time.monotonic() - t0:.0f} s: "
          f"{size / 1e6:.1f} MB on disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
