"""Issue 19's frictions, each as it would meet a user: overrides that had no effect, misspelled keys
ignored, attributes as strings, no log of a run's settings, validate refusing the project's own
stores, a second progress style, difference maps where masked looked like zero. (``run --cube
FILE.fits`` pointing to ``ingest``: tests/test_ingest_formats.py; ``bench`` under the current
folder: tests/test_bench.py.)"""

from __future__ import annotations

import dask.config
import numpy as np
import pytest
import xarray as xr

from survey_proc import config
from survey_proc.cli import main
from survey_proc.stores import Flag

ENV = {"DASK_SURVEY_PROC__RUN__MIN_SNR": "20", "DASK_SURVEY_PROC__RUN__MAX_MASKED_FRACTION": "0.3"}


@pytest.fixture(scope="module")
def overridden(mock16, tmp_path_factory):
    """A run of the 16 x 16 mock with the S/N threshold and the masked fraction set the way a user's
    environment would (``DASK_SURVEY_PROC__...``): the maps store."""
    out = tmp_path_factory.mktemp("frictions") / "c.maps.zarr"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENV.items():
            mp.setenv(key, value)
        dask.config.refresh()  # what a new process does: defaults, config files, then DASK_* variables
        try:
            assert main(["run", "--cube", str(mock16), "--out", str(out), "--cluster", "none", "--quiet"]) == 0
        finally:
            mp.undo()
            dask.config.refresh()
    return out


def test_an_environment_override_of_min_snr_takes_effect(overridden):
    maps = xr.open_zarr(overridden)
    assert maps.attrs["min_snr"] == 20.0
    assert maps.attrs["min_snr_source"] == "survey-proc.run.min-snr, over the manifest's 5"
    low = (maps.flag.values & int(Flag.LOW_SNR)) != 0
    snr = maps.snr.values
    fitted = np.isfinite(maps.log_age.values)
    assert low.any() and (snr[low & fitted] < 20).all() and (snr[~low & fitted] >= 20).all()


def test_attributes_are_numbers_not_strings(overridden):
    attrs = xr.open_zarr(overridden).attrs
    assert isinstance(attrs["redshift"], float) and isinstance(attrs["min_snr"], float)
    assert isinstance(attrs["spectra"], int) and attrs["spectra"] == 256
    assert isinstance(attrs["run_options"], dict) and attrs["run_options"]["cluster"] == "none"
    assert isinstance(attrs["flag_counts"], dict) and all(isinstance(v, int) for v in attrs["flag_counts"].values())
    assert isinstance(attrs["model_software"], dict)


def test_a_log_file_holds_the_runs_effective_settings(overridden):
    text = overridden.with_name("c.maps.log").read_text()
    assert text.startswith("survey-proc run of ")
    assert "min_snr: 20 (survey-proc.run.min-snr, over the manifest's 5)" in text
    assert "run.min-snr = 20" in text and "run.max-masked-fraction = 0.3" in text  # changed from the defaults
    # the manifest fixes max_masked_fraction: said, not silently ignored
    assert "survey-proc.run.max-masked-fraction = 0.3 has no effect" in text
    assert "run.cluster = 'local'" in text  # every setting, with its value
    assert "spectra processed: 256 of 256" in text  # the summary ends it


def test_unknown_settings_are_named(mock16, capsys):
    with dask.config.set({"survey-proc.run.min-snrr": 3, "survey-proc.run.cluster": "none"}):
        assert config.unknown_keys() == ["survey-proc.run.min-snrr (did you mean survey-proc.run.min-snr?)"]
        assert main(["validate", str(mock16)]) == 0
    err = capsys.readouterr().err
    assert "unknown setting survey-proc.run.min-snrr (did you mean survey-proc.run.min-snr?) is ignored" in err
    assert "run.cluster" not in err


def test_validate_accepts_maps_and_photometry_stores(overridden, mock16, tmp_path, capsys):
    """The photometry verb also shows the tqdm bars every other verb shows, not Dask's."""
    assert main(["validate", str(overridden)]) == 0
    assert f"{overridden}: valid maps store; dims {{'y': 16, 'x': 16}}" in capsys.readouterr().out
    phot = tmp_path / "p.zarr"
    assert main(["photometry", str(mock16), str(phot), "--filters", "sdss", "--cluster", "none"]) == 0
    captured = capsys.readouterr()
    assert "region" in captured.err and "[####" not in captured.err + captured.out  # tqdm, not dask's bar
    assert main(["validate", str(phot)]) == 0
    assert "valid photometry store; dims {'y': 16, 'x': 16, 'band': 5}" in capsys.readouterr().out


def test_validate_names_an_unfinished_maps_store(overridden, tmp_path, capsys):
    import shutil

    import zarr

    copy = tmp_path / "m.zarr"
    shutil.copytree(overridden, copy)
    zarr.open_group(str(copy), mode="r+").attrs["status"] = "running"
    assert main(["validate", str(copy)]) == 2
    assert "the run did not finish (status 'running')" in capsys.readouterr().err


def test_difference_maps_show_masked_pixels_apart_from_zero(monkeypatch, tmp_path):
    """In the compare figure a pixel without a value must not take the colour of a zero difference."""
    from matplotlib.colors import to_rgba

    from survey_proc.analysis import plot_comparison

    shown = []
    monkeypatch.setattr("survey_proc.analysis._compare.save_figure", lambda fig, path, **kw: shown.append(fig))
    values = np.linspace(9.0, 10.0, 16).reshape(4, 4)
    a = xr.Dataset({"log_age": (("y", "x"), values, {"units": "dex"}), "flag": (("y", "x"), np.zeros((4, 4), "u1"))})
    b = a.copy(deep=True)
    b["log_age"][0, 0] = np.nan  # masked in B: no difference
    plot_comparison(a, b, "log_age", tmp_path / "c.png")
    images = [im for ax in shown[0].axes for im in ax.images if "-" in ax.get_title()]
    assert images
    for im in images:
        bad = np.array(im.cmap.get_bad())
        face = np.array(to_rgba(im.axes.get_facecolor()))
        drawn = bad[:3] * bad[3] + face[:3] * (1 - bad[3])  # what a masked pixel looks like
        zero = np.array(im.cmap(im.norm(0.0)))[:3]
        assert np.abs(drawn - zero).max() > 0.2, (drawn, zero)


def test_no_plot_writes_the_maps_and_the_log_without_a_figure(mock16, tmp_path, capsys):
    out = tmp_path / "m.maps.zarr"
    assert main(["run", "--cube", str(mock16), "--out", str(out), "--cluster", "none", "--no-plot", "--quiet"]) == 0
    assert out.is_dir() and (tmp_path / "m.maps.log").is_file() and not (tmp_path / "m.maps.png").exists()
    assert "quick-look figure" not in capsys.readouterr().out
