#!/usr/bin/env bash
# Mock cube -> maps with the shipped model -> accuracy against the truth, step by step.
set -euo pipefail
survey-proc mock galaxy.zarr --nx 32 --ny 32 --seed 1 --snr 30
survey-proc run --cube galaxy.zarr --workers 2          # writes galaxy.maps.zarr beside the cube
python - <<'PY'
import xarray as xr
from survey_proc.analysis import accuracy_vs_truth, plot_maps_vs_truth
maps = xr.open_zarr("galaxy.maps.zarr")
truth = xr.open_zarr("galaxy.zarr", group="truth")
print(accuracy_vs_truth(maps, truth))
print(plot_maps_vs_truth(maps, truth, "galaxy_maps_vs_truth.png"))
PY
