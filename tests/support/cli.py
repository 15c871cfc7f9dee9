"""Running the ``mcrouter`` command as a user does, and the one-line error
contract its failures keep (the CLI tests share these)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from .processes import REPO

MCROUTER = [sys.executable, "-m", "mcrouter"]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*MCROUTER, *args], stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, cwd=str(REPO))


def write(tmp_path: Path, text: str, name: str = "router.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def assert_one_line_error(proc: subprocess.CompletedProcess, where: str | None) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == 2, f"exit {proc.returncode}, stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"expected exactly one line, got {err!r}"
    if where is not None:
        assert where in lines[0], f"{where!r} not in {lines[0]!r}"
    assert proc.stdout == b""
    return lines[0]
