#!/usr/bin/env bash
# A real MUSE cube (Abell 478 BCG, shipped in the mpdaf==3.6 wheel): fetch, ingest, run.
set -euo pipefail
fits=$(survey-proc example muse-minicube)
survey-proc ingest "$fits" minicube.zarr --redshift 0.086
survey-proc run --cube minicube.zarr --workers 2
# a 900 s exposure: most spaxels are below S/N 5 per Angstrom and carry the low_snr flag
python -c "import xarray as xr; m = xr.open_zarr('minicube.maps.zarr'); print(m.flag.attrs['flag_meanings']); print(int((m.flag == 0).sum()), 'unflagged spaxels')"
