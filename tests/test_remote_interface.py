"""`RemoteRecognizer` takes the same calls as the native `Recognizer`, so a worker holds either.

The fixture folder holds the tiny native checkpoint's numbers under upstream-shaped remote code
(tests/remote_fixture.py): in float32 on the CPU both implementations must give the same text
for every call shape a worker uses (`max_batch`, `token_budget`, per-page limits, streams).
"""

from __future__ import annotations

import inspect
import queue
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from remote_fixture import build_remote_checkpoint

from pipeline.compat.remote_recognizer import RemoteRecognizer
from pipeline.errors import BadArguments
from pipeline.model.feeds import JobFeed
from pipeline.model.generation import STOP_MAX_TOKENS
from pipeline.recognition import PageRecognizer, load_recognizer

pytestmark = [pytest.mark.compat, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def remote(tiny_model_dir: Path, tmp_path_factory) -> RemoteRecognizer:
    folder = build_remote_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("remote_iface"))
    rec = load_recognizer(folder, "cpu", "float32", impl="remote")
    assert isinstance(rec, RemoteRecognizer)
    return rec


@pytest.fixture(scope="module")
def native(tiny_model_dir: Path):
    return load_recognizer(tiny_model_dir, "cpu", "float32", impl="native")


def pages(count: int) -> list[Image.Image]:
    rng = np.random.RandomState(11)
    sizes = [(40, 90), (120, 64), (64, 64), (90, 150), (30, 200)]
    return [Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")) for h, w in sizes[:count]]


def texts(recognitions) -> list[tuple[str, str]]:
    return [(r.text, r.stop_reason) for r in recognitions]


def test_both_implementations_take_the_calls_the_loader_promises(remote, native) -> None:
    """Same names, parameters and defaults as `pipeline.recognition.PageRecognizer` states."""
    methods = {name for name in vars(PageRecognizer) if not name.startswith("_")}
    promised = methods | set(PageRecognizer.__annotations__)
    assert {"recognize", "recognize_stream", "max_image_pixels"} <= promised
    for name in promised:
        assert hasattr(remote, name) and hasattr(native, name), name
    for name in ("recognize", "recognize_stream", "image_token_count"):
        assert inspect.signature(getattr(remote, name)) == inspect.signature(
            getattr(native, name)
        ), name
        promised_params = list(inspect.signature(getattr(PageRecognizer, name)).parameters)[1:]
        assert list(inspect.signature(getattr(native, name)).parameters) == promised_params


def test_max_batch_and_per_page_limits_give_what_native_gives(remote, native) -> None:
    images = pages(5)
    limits = [3, 17, 1, 9, 12]
    want = native.recognize(images, max_new_tokens=limits, repetition_guard=False, max_batch=2)
    got = remote.recognize(
        images, max_new_tokens=limits, repetition_guard=False, max_batch=2, token_budget=4096
    )
    assert texts(got) == texts(want)
    assert [r.num_tokens for r in got] == [r.num_tokens for r in want]
    # A page cut at its own limit stops for that reason, as if generate() had been told it.
    assert got[2].num_tokens == 1 and got[2].stop_reason == STOP_MAX_TOKENS
    whole = remote.recognize(images, max_new_tokens=limits, repetition_guard=False)
    assert texts(whole) == texts(got)
    static = remote.recognize(
        images, max_new_tokens=limits, repetition_guard=False, max_batch=2, schedule="static"
    )
    assert texts(static) == texts(got)


def test_unknown_schedule_is_refused_as_native_refuses_it(remote) -> None:
    with pytest.raises(BadArguments, match="unknown schedule"):
        remote.recognize(pages(1), schedule="fastest")


def test_recognize_stream_over_a_job_queue_answers_every_job_like_native(remote, native) -> None:
    images = pages(5)
    jobs = {"a": images[:2], "b": [], "c": images[2:5]}
    tasks: queue.Queue = queue.Queue()
    for item in jobs.items():
        tasks.put(item)
    tasks.put(None)
    feed = JobFeed(lambda block: tasks.get(block=block))
    answered = []
    for key, result in remote.recognize_stream(
        feed, max_new_tokens=10, repetition_guard=False, max_batch=2
    ):
        feed.finish(key, result)
        answered += feed.pop_completed()
    answered += feed.pop_completed()
    assert sorted(job for job, _ in answered) == sorted(jobs) and feed.in_flight() == []
    for job, results in answered:
        want = native.recognize(jobs[job], max_new_tokens=10, repetition_guard=False)
        assert texts(results) == texts(want)
