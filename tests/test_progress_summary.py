"""The run summary says when the devices waited for pages because the loaders were too few."""

from __future__ import annotations

from pipeline.runner.progress import DeviceStats, RunProgress, StageTimes


def summary(busy_s: float, idle_s: float, loading: StageTimes, loaders: int) -> list[str]:
    progress = RunProgress(total=60, quiet=True, loaders=loaders)
    progress.done = 60
    for label in ("cpu:0", "cpu:1"):
        progress.devices[label] = DeviceStats(pages=30, busy_s=busy_s, idle_s=idle_s)
    return progress.summary_lines(30.0, {"done": 60}, loading)


def test_devices_starved_by_their_loaders_get_a_line_saying_what_to_change() -> None:
    # Figures of a real loader-bound run (BENCHMARKS section 4): 28 s of loading in 1 loader.
    lines = summary(8.0, 8.5, StageTimes(load_s=0.5, detect_s=27.5), loaders=1)
    (hint,) = [line for line in lines if "waited for pages" in line]
    assert "(52% of their time)" in hint and "in 1 loader process(es)" in hint
    assert "line detection 98% of it" in hint and "more --loaders" in hint


def test_no_line_when_the_devices_were_busy_or_the_loaders_kept_up() -> None:
    busy = summary(15.0, 0.1, StageTimes(load_s=0.5, detect_s=27.5), loaders=1)
    fed = summary(8.0, 8.5, StageTimes(load_s=2.0, detect_s=0.0), loaders=1)  # slow elsewhere
    assert not [line for line in busy + fed if "waited for pages" in line]
