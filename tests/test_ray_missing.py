"""`--ray` without Ray installed: one line with the install hint and exit 3, before any work.

Ray is hidden from a real CLI process (`sys.modules['ray'] = None` makes `import ray` fail as
if it were not installed), so this runs whether or not the extra is installed here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.errors import ExitCode

HIDE_RAY = "import sys; sys.modules['ray'] = None; import cli; sys.exit(cli.main())"


def test_ray_option_without_ray_installed_exits_3_with_the_install_hint(tmp_path, testdata):
    out = tmp_path / "out"
    args = ["run", str(testdata / "pages" / "vertical"), "--out", str(out)]
    args += ["--model", str(tmp_path / "model"), "--device", "cpu", "--ray", "auto"]
    result = subprocess.run(
        [sys.executable, "-c", HIDE_RAY, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == ExitCode.MISSING_DEPENDENCY, result.stderr
    assert "pip install 'anandasky-batch[ray]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
