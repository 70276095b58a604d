"""Verbs that take maps elsewhere: ``export`` (a multi-extension FITS file) and ``plot`` (a quick-look PNG)."""

from __future__ import annotations

import argparse


def add_export(sub) -> None:
    e = sub.add_parser(
        "export",
        help="a maps store as a multi-extension FITS file: one image per property with BUNIT and the cube's "
        "WCS, the errors, the flag bitmask and its meanings, provenance (DS9, QFitsView, astropy)",
    )
    e.add_argument("maps", help="maps store (.zarr)")
    e.add_argument("out", help="FITS file to write (.fits or .fits.gz)")
    e.add_argument("--overwrite", action="store_true", help="replace a FITS file an earlier export wrote")
    e.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from survey_proc.stores import export_maps_fits

    info = export_maps_fits(args.maps, args.out, overwrite=args.overwrite)
    wcs = "with the cube's celestial WCS" if info.wcs else "without a celestial WCS (the cube had none)"
    print(f"{args.out}: {len(info.extensions)} extensions ({', '.join(info.extensions)}), {wcs}")
    if info.omitted:
        print(f"left out (extra dims): {', '.join(info.omitted)}")
    return 0


def add_plot(sub) -> None:
    p = sub.add_parser("plot", help="a quick-look PNG of a maps store: every property on the sky, and the flag")
    p.add_argument("maps", help="maps store (.zarr)")
    p.add_argument("--out", help="PNG to write (default: <maps>.png beside the store)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    from survey_proc.analysis import plot_maps

    print(f"quick-look figure: {plot_maps(args.maps, args.out)}")
    return 0
