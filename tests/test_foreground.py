"""The Milky Way foreground E(B-V) undone before estimating (issue 17): --mw-ebv, the cube's ebv_mw."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from survey_proc.engine import RunConfig, run
from survey_proc.errors import OptionError
from survey_proc.ssp import foreground_correction


def test_the_correction_is_fitzpatrick99_with_rv_3p1():
    wave = np.array([4400.0, 5500.0, 9000.0])
    assert np.all(foreground_correction(wave, 0.0) == 1.0)
    a_lambda = 2.5 * np.log10(foreground_correction(wave, 0.1))
    assert a_lambda[1] == pytest.approx(0.31, abs=0.02)  # A_V = R_V E(B-V)
    assert a_lambda[0] > a_lambda[1] > a_lambda[2] > 0  # bluer light is dimmed more


def _redden(cube, ebv: float) -> None:
    """Dim the cube's spectra as a Milky Way foreground of ``ebv`` would (variance with them)."""
    grp = zarr.open_group(str(cube), mode="r+")
    wave = np.asarray(grp["wave"][:], np.float64)
    dim = (1.0 / foreground_correction(wave, ebv)).astype(np.float32)
    grp["flux"][:] = np.asarray(grp["flux"][:]) * dim
    grp["var"][:] = np.asarray(grp["var"][:]) * dim**2


def _maps(cube, out, **options):
    run(RunConfig(cube=str(cube), out=str(out), cluster="none", progress=False, plot=False, **options))
    return xr.open_zarr(out)


def test_a_reddened_cube_gives_back_its_maps_with_mw_ebv(mock16, cube_copy, tmp_path):
    """A mock dimmed by E(B-V) = 0.15 of Milky Way dust: without the correction its A_V rises by about
    R_V E(B-V); with --mw-ebv 0.15 the maps are those of the undimmed cube; the maps record the value."""
    clean = _maps(mock16, tmp_path / "clean.zarr")
    _redden(cube_copy, 0.15)
    raw = _maps(cube_copy, tmp_path / "raw.zarr")
    fixed = _maps(cube_copy, tmp_path / "fixed.zarr", mw_ebv=0.15)
    good = (clean.flag.values == 0) & (fixed.flag.values == 0) & (raw.flag.values == 0)
    assert good.mean() > 0.5
    assert np.median((raw.av.values - clean.av.values)[good]) > 0.25
    for name in ("log_age", "metallicity", "av", "sigma"):
        diff = np.abs(fixed[name].values - clean[name].values)[good]
        assert np.median(diff) < 0.1 * np.median(clean[f"{name}_err"].values[good]), name
    assert fixed.attrs["mw_ebv"] == 0.15 and fixed.attrs["mw_ebv_source"] == "--mw-ebv"
    assert "fitzpatrick99" in fixed.attrs["mw_ebv_law"] and raw.attrs["mw_ebv"] == 0.0


def test_the_cube_attribute_is_used_and_bad_values_are_refused(cube_copy, tmp_path):
    grp = zarr.open_group(str(cube_copy), mode="r+")
    grp.attrs["ebv_mw"] = 0.05
    maps = _maps(cube_copy, tmp_path / "m.zarr")
    assert maps.attrs["mw_ebv"] == 0.05 and maps.attrs["mw_ebv_source"] == "the cube's ebv_mw"
    with pytest.raises(OptionError, match=r"Milky Way E\(B-V\) -0.1 \(--mw-ebv\) is outside 0-2 mag"):
        run(RunConfig(cube=str(cube_copy), out=str(tmp_path / "n.zarr"), cluster="none", progress=False, mw_ebv=-0.1))
    grp.attrs["ebv_mw"] = "lots"
    with pytest.raises(OptionError, match=r"'lots' \(the cube's ebv_mw\) is not a number"):
        run(RunConfig(cube=str(cube_copy), out=str(tmp_path / "o.zarr"), cluster="none", progress=False))


def test_photometry_is_not_corrected_here(tmp_path):
    from survey_proc.cli import main

    store = tmp_path / "p.zarr"
    assert main(["mock", "--photometry", "jpas36", "--nx", "8", "--ny", "8", "--quiet", str(store)]) == 0
    with pytest.raises(OptionError, match="the foreground is undone on spectra; this store holds photometry"):
        run(RunConfig(cube=str(store), out=str(tmp_path / "m.zarr"), model="narrowband", cluster="none", mw_ebv=0.05))
