"""Verbs that make and check stores: ``mock``, ``photometry``, ``resample``, ``ingest``,
``ingest-spectra``, ``bin``, ``validate``, ``example``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from survey_proc import config
from survey_proc.cli._common import add_quiet, positive_int
from survey_proc.errors import SurveyProcError

#: the mock's options whose defaults are ``survey-proc.mock.*`` (with ``--like``: the galaxy's)
MOCK_FIELDS = ("nx", "ny", "seed", "snr", "redshift")
#: the names ``--library`` takes (``survey_proc.ssp.SSP_LIBRARIES``; listed here so --help stays fast)
LIBRARIES = ("emiles", "m11-miles", "m11-stelib", "m11-elodie", "m11-marcs", "mastar", "bpass", "miuscat", "bc03")


def default_chunk(nx: int, ny: int) -> int:
    """Spatial chunk: 32 for survey-size cubes, smaller for small ones so several workers share them."""
    return int(min(32, max(8, -(-max(nx, ny) // 4))))


def mock_config(like: str | None = None, **fields):
    """The :class:`~survey_proc.synth.MockConfig` of ``fields`` (None: the ``survey-proc.mock``
    default, or with ``like`` the galaxy's), chunked by :func:`default_chunk`."""
    from survey_proc.synth import MockConfig

    if like:
        return MockConfig.like_galaxy(like, **fields)
    return MockConfig(**{k: v if v is not None else config.get(f"mock.{k}") for k, v in fields.items()})


# --- mock -----------------------------------------------------------------------------------------


def add_mock(sub) -> None:
    m = sub.add_parser("mock", help="build a mock MUSE-like cube with truth maps")
    m.add_argument("out", help="output cube store (.zarr)")
    for axis in ("x", "y"):
        m.add_argument(
            f"--n{axis}",
            type=positive_int,
            help=f"spaxels along {axis} (default: {config.get(f'mock.n{axis}')}; with --like: the galaxy's)",
        )
    m.add_argument("--seed", type=int, help=f"random seed (default: {config.get('mock.seed')})")
    m.add_argument(
        "--snr", type=float, help=f"S/N per Angstrom of the brightest spaxels (default: {config.get('mock.snr')})"
    )
    m.add_argument(
        "--redshift",
        type=float,
        help=f"systemic redshift (default: {config.get('mock.redshift')}; with --like: the galaxy's)",
    )
    m.add_argument("--like", choices=["ngc4254"], help="a galaxy whose scale to copy (~65,000 spaxels)")
    m.add_argument("--chunk", type=positive_int, help="spatial chunk size (default: by cube size, <= 32)")
    m.add_argument(
        "--wave-range",
        type=float,
        nargs=2,
        metavar=("START", "STOP"),
        help="observed wavelengths of the cube, Angstrom (default 4750 9350, MUSE; the SSP library "
        "allows about 2600-10400 at low redshift)",
    )
    m.add_argument(
        "--photometry",
        metavar="FILTERS",
        help="write mock photometry (jpas | jpas36 | sdss) of the same galaxy instead of a cube",
    )
    m.add_argument("--pixel-scale", type=float, help="arcsec per pixel (default 0.2)")
    m.add_argument("--psf-fwhm", type=float, help="seeing FWHM in pixels for mock photometry (default 0)")
    m.add_argument(
        "--library",
        metavar="NAME",
        help="SSP library of the spectra and the truth: " + ", ".join(LIBRARIES) + " (default emiles; "
        "miuscat and bc03 are kept for independent evaluation)",
    )
    m.add_argument(
        "--mask-uncovered",
        action="store_true",
        help="mask the cube's wavelengths the library does not cover instead of refusing the mock",
    )
    add_quiet(m)
    m.set_defaults(func=cmd_mock, reports=True)


def cmd_mock(args: argparse.Namespace) -> int:
    from survey_proc.synth import write_mock

    cfg = mock_config(args.like, **{k: getattr(args, k) for k in MOCK_FIELDS})
    cfg.chunk = args.chunk or default_chunk(cfg.nx, cfg.ny)
    if args.wave_range:
        cfg.wave_start, cfg.wave_stop = args.wave_range
    if args.pixel_scale:
        cfg.pixel_scale_arcsec = args.pixel_scale
    cfg.library = args.library or cfg.library
    cfg.mask_uncovered = bool(args.mask_uncovered)
    if args.photometry:
        return _mock_photometry(args, cfg)
    info = write_mock(args.out, cfg)
    print(
        f"mock cube {cfg.ny} x {cfg.nx} spaxels x {info.wavelengths} wavelengths "
        f"(S/N {cfg.snr:g} per A at the centre, z = {cfg.redshift:g}, seed {cfg.seed}"
        + ("" if cfg.library == "emiles" else f", SSP library {cfg.library}")
        + f") written to {args.out} in {info.seconds:.1f} s; truth maps in its group 'truth'"
    )
    return 0


def _mock_photometry(args: argparse.Namespace, cfg) -> int:
    from survey_proc.synth import write_mock_photometry

    cfg.psf_fwhm_pixels = args.psf_fwhm or 0.0
    info = write_mock_photometry(args.out, cfg, _filters(args.photometry))
    print(
        f"mock photometry {cfg.ny} x {cfg.nx} pixels x {info.bands} {args.photometry} bands (S/N {cfg.snr:g} "
        f"per A at the brightest pixel, integrated over each band; z = {cfg.redshift:g}, seed {cfg.seed}) "
        f"written to {args.out} in "
        f"{info.seconds:.1f} s; truth maps in its group 'truth' (the same galaxy `survey-proc mock` "
        "makes with these options)"
    )
    return 0


def _filters(name: str):
    from survey_proc.ssp import load_filters

    try:
        return load_filters(name)
    except ValueError as exc:
        raise SurveyProcError(str(exc)) from exc


# --- photometry -----------------------------------------------------------------------------------


def add_photometry(sub) -> None:
    ph = sub.add_parser("photometry", help="synthetic photometry of a cube or catalogue through a filter set")
    ph.add_argument("cube", help="cube or spectra-catalogue store (.zarr)")
    ph.add_argument("out", help="photometric store to write (.zarr)")
    ph.add_argument("--filters", required=True, help="jpas (54 bands) | jpas36 | sdss (ugriz)")
    ph.add_argument("--cluster", help="local | none | scheduler address")
    ph.add_argument("--workers", type=positive_int)
    ph.add_argument(
        "--keep-sky-lines",
        action="store_true",
        help="integrate over the bright night-sky lines too (default: left out, +-2 FWHM)",
    )
    add_quiet(ph)
    ph.set_defaults(func=cmd_photometry, reports=True)


def cmd_photometry(args: argparse.Namespace) -> int:
    from survey_proc.synth import photometry_from_store

    info = photometry_from_store(
        args.cube,
        _filters(args.filters),
        args.out,
        cluster=args.cluster,
        workers=args.workers,
        mask_sky=not args.keep_sky_lines,
    )
    short = info.bands_short_of_coverage
    print(
        f"synthetic photometry: {info.spectra} spectra x {info.bands} {args.filters} bands in "
        f"{info.seconds:.1f} s ({info.spectra_per_s:,.0f} spectra/s, cluster start-up excluded) "
        f"written to {args.out}"
        + (f"; masked everywhere for lack of wavelength coverage: {', '.join(short)}" if short else "")
        + ("; truth maps copied to its group 'truth'" if info.truth else "")
    )
    return 0


def add_resample(sub) -> None:
    rs = sub.add_parser(
        "resample", help="bring a photometric image store to a model's pixel scale and seeing (flux-conserving)"
    )
    rs.add_argument("store", help="photometric (y, x, band) store (.zarr)")
    rs.add_argument("out", help="resampled photometric store to write (.zarr)")
    rs.add_argument("--model", help="match this image model's pixels and seeing (default: ugriz-maps)")
    rs.add_argument("--pixel-scale", type=float, help="target pixel scale, arcsec (instead of --model's)")
    rs.add_argument("--psf-fwhm", type=float, help="target Gaussian seeing FWHM, arcsec (instead of --model's)")
    rs.add_argument(
        "--input-psf", type=float, help="the images' seeing FWHM, arcsec (else the store's psf_fwhm_arcsec)"
    )
    rs.add_argument("--input-pixel-scale", type=float, help="the images' pixel scale, arcsec (else the store's)")
    add_quiet(rs)
    rs.set_defaults(func=cmd_resample, reports=True)


def cmd_resample(args: argparse.Namespace) -> int:
    from survey_proc.resample import METHOD, model_target, resample_store

    scale, psf = model_target(args.model or "ugriz-maps")
    info = resample_store(
        args.store,
        args.out,
        pixel_scale=args.pixel_scale if args.pixel_scale is not None else scale,
        psf_fwhm=args.psf_fwhm if args.psf_fwhm is not None else psf,
        input_psf_fwhm=args.input_psf,
        input_pixel_scale=args.input_pixel_scale,
    )
    print(
        f'resampled {args.store}: {info.shape_in[0]} x {info.shape_in[1]} pixels of {info.scale_in:g}" '
        f'(seeing {info.psf_in:g}") -> {info.shape_out[0]} x {info.shape_out[1]} of {info.scale_out:g}" '
        f'(seeing {info.psf_out:g}", Gaussian kernel sigma {info.kernel_sigma_arcsec:.3f}") in '
        f"{info.seconds:.1f} s, written to {args.out}\nmethod: {METHOD}"
    )
    return 0


# --- ingest ---------------------------------------------------------------------------------------


def add_ingest(sub) -> None:
    i = sub.add_parser(
        "ingest",
        help="FITS cube into a cube store: MUSE (DATA/STAT/DQ), MaNGA LOGCUBE, CALIFA, or any cube with a "
        "spectral WCS and a variance, inverse-variance or error extension",
    )
    i.add_argument("fits")
    i.add_argument("out")
    i.add_argument("--redshift", type=float, help="systemic redshift (else from the header, if there)")
    i.add_argument(
        "--lsf-fwhm",
        type=float,
        help="instrumental FWHM in Angstrom (default: the format's: MUSE Bacon+17, MaNGA per spaxel, CALIFA by setup)",
    )
    i.add_argument(
        "--lsf-per-spaxel",
        action="store_true",
        help="keep a per-spaxel resolution (MaNGA) as lsf_fwhm_spaxel(y, x, wave) beside the median the models read",
    )
    i.add_argument("--data-ext", help="extension holding the data (name or number), where detection cannot tell")
    i.add_argument("--error-ext", help="extension holding the uncertainty (name or number)")
    i.add_argument("--error-kind", choices=["variance", "ivar", "error"], help="what --error-ext holds")
    i.add_argument("--mask-ext", help="extension holding the bad-pixel mask (non-zero = bad)")
    i.add_argument(
        "--medium", choices=["air", "vacuum"], help="wavelength medium, where the spectral axis does not say"
    )
    i.add_argument("--chunk", type=positive_int)
    add_quiet(i)
    i.set_defaults(func=cmd_ingest, reports=True)


def cmd_ingest(args: argparse.Namespace) -> int:
    from survey_proc.stores import IngestOptions, ingest_fits

    chunk = args.chunk or config.get("ingest.rows-per-chunk")
    options = IngestOptions(
        data_ext=args.data_ext,
        error_ext=args.error_ext,
        error_kind=args.error_kind,
        mask_ext=args.mask_ext,
        medium=args.medium,
        lsf_fwhm=args.lsf_fwhm,
        lsf_per_spaxel=args.lsf_per_spaxel,
    )
    info = ingest_fits(args.fits, args.out, redshift=args.redshift, chunk=chunk, options=options)
    ny, nx, nw = info.shape
    z = "not set (give --redshift to run)" if info.redshift is None else f"{info.redshift:g}"
    sky = "ra/dec from its celestial WCS" if info.sky else "no celestial WCS"
    print(
        f"ingested {args.fits} ({info.format}: {info.extensions}): {ny} x {nx} spaxels x {nw} wavelengths "
        f"({info.wave[0]:.1f}-{info.wave[1]:.1f} A, {info.medium}), {info.masked_fraction:.2%} of pixels masked, "
        f"redshift {z}, {sky}; written to {args.out} in {info.seconds:.1f} s\n"
        f"resolution: {info.lsf}"
    )
    return 0


def add_ingest_spectra(sub) -> None:
    si = sub.add_parser(
        "ingest-spectra",
        help="SDSS spectrum FITS files, or one FITS file of many spectra (images or a table of WAVE, FLUX, "
        "IVAR), into one spectra catalogue (object, wave)",
    )
    si.add_argument(
        "files",
        nargs="+",
        help="SDSS spec/spec-lite (DR9+) or DR8 CAS table FITS files; or one file of spectra on one grid",
    )
    si.add_argument("out", help="output catalogue store (.zarr)")
    si.add_argument("--redshift", type=float, help="redshift for files that carry none")
    si.add_argument(
        "--medium", choices=["air", "vacuum"], help="wavelength medium, where a file of spectra does not say"
    )
    si.add_argument(
        "--lsf-fwhm", type=float, help="instrumental FWHM in Angstrom, where a file of spectra does not say"
    )
    si.add_argument(
        "--chunk",
        type=positive_int,
        help=f"spectra per stored chunk (default: {config.get('ingest.spectra-per-chunk')})",
    )
    add_quiet(si)
    si.set_defaults(func=cmd_ingest_spectra, reports=True)


def cmd_ingest_spectra(args: argparse.Namespace) -> int:
    from survey_proc.stores import ingest_sdss_spectra, ingest_spectra_fits, is_generic_spectra

    chunk = args.chunk or config.get("ingest.spectra-per-chunk")
    generic = [f for f in args.files if is_generic_spectra(f)]
    if generic and len(args.files) > 1:
        raise SurveyProcError(f"ingest a file of many spectra on its own: {generic[0]} (one file per catalogue)")
    if generic:
        info = ingest_spectra_fits(
            generic[0], args.out, redshift=args.redshift, medium=args.medium, lsf_fwhm=args.lsf_fwhm, chunk=chunk
        )
        what = f"spectra of {generic[0]}"
    else:
        info = ingest_sdss_spectra(args.files, args.out, redshift=args.redshift, chunk=chunk)
        what = "SDSS spectra"
    print(
        f"ingested {info.spectra} {what} x {info.wavelengths} wavelengths ({info.wave[0]:.1f}-"
        f"{info.wave[1]:.1f} A, {info.medium}), z {info.redshift[0]:.4f}-{info.redshift[1]:.4f}, "
        f"{info.masked_fraction_covered:.2%} of covered pixels masked; written to {args.out} in "
        f"{info.seconds:.1f} s ({info.spectra / max(info.seconds, 1e-9):.0f} spectra/s)"
    )
    return 0


# --- bin ------------------------------------------------------------------------------------------


def add_bin(sub) -> None:
    b = sub.add_parser("bin", help="Voronoi-bin a cube to a target S/N: a spectra catalogue of bins + pixel map")
    b.add_argument("cube", help="cube store (y, x, wave)")
    b.add_argument("out", help="catalogue store to write (object, wave)")
    b.add_argument(
        "--target-snr", type=float, help=f"S/N per Angstrom of each bin (default: {config.get('bin.target-snr')})"
    )
    b.add_argument(
        "--min-snr",
        type=float,
        help=f"spaxels below this S/N per Angstrom are left out (default: {config.get('bin.min-snr')})",
    )
    b.add_argument(
        "--wave-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="rest-frame Angstrom where S/N is measured (default: the whole cube)",
    )
    b.add_argument("--chunk", type=positive_int, help="bins per chunk of the catalogue (= per region of a run)")
    b.add_argument(
        "--covariance-alpha",
        type=float,
        help="noise of a bin of N spaxels x (1 + ALPHA log10 N), for resampled cubes whose neighbouring spaxels "
        f"are correlated (CALIFA: 1.07, Garcia-Benito et al. 2015; default: {config.get('bin.covariance-alpha')})",
    )
    b.add_argument("--overwrite", action="store_true")
    add_quiet(b)
    b.set_defaults(func=cmd_bin, reports=True)


def cmd_bin(args: argparse.Namespace) -> int:
    from survey_proc.binning import BinConfig, bin_cube, plot_bins

    cfg = BinConfig(
        target_snr=args.target_snr,
        min_snr=args.min_snr,
        wave_range=tuple(args.wave_range) if args.wave_range else None,
        objects_per_chunk=args.chunk,
        covariance_alpha=args.covariance_alpha,
        overwrite=args.overwrite,
    )
    info = bin_cube(args.cube, args.out, cfg)
    png = plot_bins(info, Path(args.out).with_suffix(".bins.png"), title=f"{args.cube}: Voronoi bins")
    print(
        f"{info.spaxels} spaxels -> {info.bins} bins at target S/N {cfg.resolved().target_snr:g} per A "
        f"(median expected bin S/N {info.median_bin_snr:.1f}; {info.single_spaxel_bins} single-spaxel "
        f"bins; largest {info.max_spaxels_per_bin} spaxels; {info.left_out} spaxels below the minimum "
        f"S/N left out) in {info.seconds:.1f} s\n"
        f"catalogue of bins written to {args.out} (pixel -> bin map: variable 'bin_id'); bin map: {png}\n"
        f"run it with: survey-proc run --cube {args.out}"
    )
    return 0


# --- validate, example ----------------------------------------------------------------------------


def add_validate(sub) -> None:
    v = sub.add_parser(
        "validate", help="check that a store follows its schema: a cube, catalogue, photometric or maps store"
    )
    v.add_argument("store")
    v.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    from survey_proc.stores import validate_store

    info = validate_store(args.store)
    print(f"{args.store}: valid {info.kind} store; dims {info.dims}, {info.description}")
    return 0


def add_example(sub) -> None:
    e = sub.add_parser("example", help="fetch a real example file and print its path")
    e.add_argument("name", choices=["muse-minicube", "sdss-spectra", "manga-spectra"])
    e.set_defaults(func=cmd_example)


def cmd_example(args: argparse.Namespace) -> int:
    """The example's path(s) on stdout (for ``$(...)``), how to ingest them on stderr."""
    if args.name == "sdss-spectra":
        from survey_proc.stores import sdss_spectra

        print(" ".join(str(p) for p in sdss_spectra()))
        print(
            "# ingest them with: survey-proc ingest-spectra $(survey-proc example sdss-spectra) sdss.zarr",
            file=sys.stderr,
        )
        return 0
    if args.name == "manga-spectra":
        from survey_proc.stores import manga_spectra

        print(manga_spectra())
        print(
            "# 8 real MaNGA spaxels; ingest them with: survey-proc ingest-spectra $(survey-proc example "
            "manga-spectra) manga.zarr",
            file=sys.stderr,
        )
        return 0
    from survey_proc.stores import MINICUBE_REDSHIFT, muse_minicube

    path = muse_minicube()
    print(path)
    print(f"# ingest it with: survey-proc ingest {path} minicube.zarr --redshift {MINICUBE_REDSHIFT}", file=sys.stderr)
    return 0
