"""Micro-batching in ``cxr serve``: concurrent requests share model calls, each its own answer, none waits alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import running_server, tiny_checkpoint
from cxr.inference.serve.batching import MicroBatcher

LIMIT = 60  # seconds before a test calls a hang a hang (never a speed threshold)


class FakeModel:
    """``(B, 1, S, S)`` → each image's mean value in column 0 and its batch size in column 1; optionally held."""

    def __init__(self, hold_first: bool = False):
        self.sizes: list[int] = []
        self.entered, self.release = threading.Event(), threading.Event()
        self.hold_first = hold_first

    def __call__(self, batch: np.ndarray, tta: bool) -> np.ndarray:
        self.entered.set()
        if self.hold_first and not self.sizes:
            assert self.release.wait(LIMIT)
        self.sizes.append(len(batch))
        if (batch < 0).any():
            raise ValueError("the model failed")
        return np.stack([batch.mean(axis=(1, 2, 3)), np.full(len(batch), len(batch))], axis=1)


def wait_until(condition) -> None:
    for _ in range(LIMIT * 100):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition never met")


def submit(batcher: MicroBatcher, value: float, tta: bool = False) -> np.ndarray:
    with batcher.request() as slot:
        return slot.submit(np.full((1, 4, 4), value, dtype=np.float32), tta)


def test_queued_requests_share_calls_of_at_most_batch_max_each_with_its_own_answer():
    model = FakeModel(hold_first=True)
    batcher = MicroBatcher(model, batch_max=2, wait_ms=0)
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(submit, batcher, 1.0)
        assert model.entered.wait(LIMIT)  # the first request is inside the model...
        rest = [pool.submit(submit, batcher, float(value)) for value in (2, 3, 4, 5)]
        wait_until(lambda: len(batcher.queue) == 4)  # ...while four more queue up
        model.release.set()
        answers = [future.result(LIMIT) for future in [first, *rest]]
    assert model.sizes == [1, 2, 2]
    assert [row[0] for row in answers] == [1.0, 2.0, 3.0, 4.0, 5.0]  # each request its own image's answer
    batcher.close()


def test_a_batch_waits_for_announced_requests_but_a_lone_request_never_waits():
    model = FakeModel()
    batcher = MicroBatcher(model, batch_max=8, wait_ms=600_000)  # ten minutes: only "nothing announced" ends it early
    assert submit(batcher, 1.0)[1] == 1  # alone: answered at once, in a batch of one
    decoding = threading.Event()

    def slow_request(value: float) -> np.ndarray:
        with batcher.request() as slot:
            assert decoding.wait(LIMIT)  # still "decoding" when the other request is already queued
            return slot.submit(np.full((1, 4, 4), value, dtype=np.float32))

    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(slow_request, 2.0)
        wait_until(lambda: batcher.announced == 1)
        fast = pool.submit(submit, batcher, 3.0)
        wait_until(lambda: len(batcher.queue) == 1)
        decoding.set()
        assert fast.result(LIMIT)[1] == 2 and slow.result(LIMIT)[1] == 2  # one call for both
    assert model.sizes == [1, 2]
    batcher.close()


def test_a_request_failing_before_the_model_does_not_hold_the_batch_and_model_errors_reach_every_caller():
    model = FakeModel()
    batcher = MicroBatcher(model, batch_max=8, wait_ms=600_000)
    with pytest.raises(RuntimeError), batcher.request():
        raise RuntimeError("undecodable upload")
    assert batcher.announced == 0 and submit(batcher, 1.0)[1] == 1
    with pytest.raises(ValueError, match="the model failed"):
        submit(batcher, -1.0)
    assert submit(batcher, 2.0)[0] == 2.0  # the batcher goes on after a failed call
    batcher.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        submit(batcher, 1.0)


def test_tta_and_plain_requests_go_to_separate_calls():
    model = FakeModel(hold_first=True)
    batcher = MicroBatcher(model, batch_max=8, wait_ms=0)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(submit, batcher, 1.0)
        assert model.entered.wait(LIMIT)
        rest = [pool.submit(submit, batcher, 2.0, tta) for tta in (False, True, False)]
        wait_until(lambda: len(batcher.queue) == 3)
        model.release.set()
        [future.result(LIMIT) for future in [first, *rest]]
    assert model.sizes == [1, 2, 1]
    batcher.close()


@pytest.mark.slow
def test_concurrent_uploads_share_model_calls_and_get_their_own_probabilities(sample_dir, tmp_path):
    """Eight clients, eight different radiographs: the model held on the first call, the other seven share the
    next; every answer equals that image's prediction alone, and /metrics counts the batch sizes."""
    import httpx

    from cxr.inference.predict import load_predictor, predict_images
    from cxr.inference.serve import create_app

    checkpoint = tiny_checkpoint(tmp_path / "tiny.ckpt")
    images = sorted((sample_dir / "images").glob("*.png"))[:8]
    alone = predict_images(checkpoint, images)
    expected = {path.name: record["probabilities"] for path, record in zip(images, alone, strict=True)}
    predictor = load_predictor(checkpoint)
    model = FakeModel(hold_first=True)
    real = predictor.probabilities

    def held(batch):
        model(np.zeros((len(batch), 1, 1, 1), np.float32), False)  # records the size, holds the first call
        return real(batch)

    predictor.probabilities = held
    app = create_app(checkpoint, predictor=predictor, batch_max=8, batch_wait_ms=0, decode_threads=8)

    def post(url: str, path) -> tuple[str, dict]:
        with httpx.Client(base_url=url, timeout=LIMIT) as client:
            answer = client.post("/api/predict", files={"file": ("x.png", path.read_bytes(), "image/png")})
            assert answer.status_code == 200, answer.text
            return path.name, answer.json()["probabilities"]

    with running_server(app) as url, ThreadPoolExecutor(8) as pool:
        first = pool.submit(post, url, images[0])
        assert model.entered.wait(LIMIT)
        rest = [pool.submit(post, url, path) for path in images[1:]]
        service = app.state.model_state.service
        wait_until(lambda: len(service.batcher.queue) == 7)
        model.release.set()
        answers = dict(future.result(LIMIT) for future in [first, *rest])
        metrics = httpx.get(f"{url}/metrics").text
    assert model.sizes == [1, 7]
    for name, probabilities in answers.items():
        np.testing.assert_allclose(list(probabilities.values()), list(expected[name].values()), atol=1e-5)
    assert 'cxr_model_batch_images_bucket{le="1.0"} 1.0' in metrics and "cxr_model_batch_images_sum 8.0" in metrics


def test_unknown_query_parameters_are_refused_and_lone_requests_are_batches_of_one(tmp_path, sample_dir):
    from fastapi.testclient import TestClient

    from cxr.inference.serve import create_app

    data = sorted((sample_dir / "images").glob("*.png"))[0].read_bytes()
    client = TestClient(create_app(tiny_checkpoint(tmp_path / "tiny.ckpt")))
    files = {"file": ("x.png", data, "image/png")}
    typo = client.post("/api/predict", params={"cams": "all"}, files=files)
    assert typo.status_code == 400 and "cam, preview, tta" in typo.json()["detail"]
    assert "cams" not in typo.text  # what the client sent is not echoed
    for _ in range(2):
        assert client.post("/api/predict", params={"tta": "true"}, files=files).status_code == 200
    metrics = client.get("/metrics").text
    assert 'cxr_model_batch_images_bucket{le="1.0"} 2.0' in metrics and "cxr_model_batch_images_count 2.0" in metrics
