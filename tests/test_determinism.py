"""The determinism contract: same config, seed, data, device and thread count give bit-identical weights,
and every training run records the device and thread count that contract depends on."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from imbadv.jobs.train import run_train
from imbadv.tracking import names


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.slow
def test_same_threads_give_the_same_weights_and_every_run_records_its_threads(store, small_data, session_cache,
                                                                              threads):
    options = {"preset": "smoke", "data": str(small_data), "cache_dir": str(session_cache), "device": "cpu"}
    client = MlflowClient()
    trained = []
    for count in (1, 1, 2):
        threads(count)
        outcome = run_train(**options)
        version = client.get_model_version(outcome.model_name, outcome.version)
        run = client.get_run(outcome.run_id)
        trained.append((run.data.tags[names.TAG_THREADS], run.data.tags[names.TAG_DEVICE],
                        version.tags["weights_sha256"]))
    (threads_a, device_a, weights_a), (threads_b, device_b, weights_b), (threads_c, _, _) = trained
    assert (threads_a, threads_b, threads_c) == ("1", "1", "2") and device_a == device_b == "cpu"
    assert weights_a == weights_b  # same device and thread count: bit-identical
