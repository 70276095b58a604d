"""Training sets in Zarr stores (survey_proc.training.write_trainset, `survey-proc trainset`)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from survey_proc.training import (
    StoredSet,
    TrainsetConfig,
    muse_rest_4750_7100_input,
    synthesise,
    write_trainset,
)


def test_a_stored_set_equals_the_set_drawn_in_memory_and_resumes(tmp_path, ssp_lib):
    cfg, spec = TrainsetConfig(n=500, batch=200, seed=11), muse_rest_4750_7100_input()
    path = tmp_path / "ts.zarr"
    stored = write_trainset(cfg, ssp_lib, spec, path)
    memory = synthesise(cfg, ssp_lib, spec)
    assert isinstance(stored, StoredSet) and len(stored) == 500 and stored.label_names == cfg.labels
    loaded = stored.load()
    for name in ("flux", "weights", "labels", "wave_index", "redshift", "kind", "emission"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(memory, name))
    np.testing.assert_array_equal(loaded.snr, memory.snr.astype(np.float32))  # stored as float32
    idx = np.array([450, 3, 201, 4, 199])  # unordered, across batches
    np.testing.assert_array_equal(stored.subset(idx).flux, memory.flux[idx])
    # a write cut short: batch 1 not marked done (and its rows lost) is written again on a rerun
    group = zarr.open_group(str(path), mode="r+")
    group["batch_done"][1:2] = np.zeros(1, np.uint8)
    group["flux"][200:400] = np.zeros((200, group["flux"].shape[1]), np.float32)
    with pytest.raises(ValueError, match="incomplete"):
        StoredSet(path)
    np.testing.assert_array_equal(write_trainset(cfg, ssp_lib, spec, path).load().flux, memory.flux)
    with pytest.raises(ValueError, match="holds another training set"):
        write_trainset(TrainsetConfig(n=500, batch=200, seed=12), ssp_lib, spec, path)


def test_trainset_cli_writes_the_configs_set(tmp_path):
    from survey_proc.cli import main

    config = tmp_path / "t.yaml"
    config.write_text(
        "input: muse-rest-4750-8800\ntrainset: {n: 40, batch: 20, seed: 2, redshift_range: [0.0, 0.06]}\n"
    )
    assert main(["trainset", str(config), str(tmp_path / "ts.zarr"), "--quiet"]) == 0
    stored = StoredSet(tmp_path / "ts.zarr")
    assert len(stored) == 40 and stored.config == TrainsetConfig(n=40, batch=20, seed=2, redshift_range=(0.0, 0.06))
