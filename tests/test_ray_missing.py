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


def test_device_ids_with_ray_are_refused_before_any_cluster_is_joined(tmp_path, testdata):
    """Ray assigns each actor its device: `--devices` would be silently meaningless."""
    args = ["run", str(testdata / "pages" / "vertical"), "--out", str(tmp_path / "out")]
    args += ["--model", str(tmp_path / "model"), "--device", "npu", "--devices", "0,1"]
    args += ["--ray", "auto"]
    result = subprocess.run(
        [sys.executable, "-c", HIDE_RAY, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == ExitCode.BAD_ARGUMENTS, result.stderr
    assert "--devices 0,1 with --ray" in result.stderr


def test_ray_settings_are_stored_for_resume_but_not_fingerprinted(tiny_model_dir):
    """A run may move between one machine and a cluster (or another cluster) and keep its pages;
    `resume` joins the cluster the first run named."""
    from pipeline.runner.settings import RunSettings

    def settings(**ray) -> RunSettings:
        return RunSettings(inputs=("in",), out_dir="out", model_dir=str(tiny_model_dir), **ray)

    on_cluster = settings(ray="10.0.0.1:6379", ray_resource="NPU")
    fingerprint = {"model_checksum": "m", "prompt": "p", "device_type": "npu", "code_checksum": ""}
    assert on_cluster.fingerprint(**fingerprint) == settings().fingerprint(**fingerprint)
    resumed = RunSettings.from_stored(on_cluster.to_stored())
    assert (resumed.ray, resumed.ray_resource) == ("10.0.0.1:6379", "NPU")
    assert RunSettings.from_stored(on_cluster.to_stored(), ray="auto").ray == "auto"
