"""Setting a cube up for a run: validate the cube and the model, write (or resume) the maps store.

:func:`prepare_cube` opens and validates the cube, reads (and verifies) the model's manifest,
smoke-loads the estimator so a corrupt model fails before any cluster starts, falls back to
``run.fallback-model`` when the default model does not cover the cube, and creates the maps store
from its template, or resumes it when it holds this very run (:func:`survey_proc.stores.create_or_resume`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc import __version__, config
from survey_proc.binning import PIXEL_MAP
from survey_proc.engine._config import RunConfig
from survey_proc.engine._jobs import CubeJob
from survey_proc.engine._region import RegionOptions, read_feature_axis
from survey_proc.engine._template import MASS_FLUX, derived_variables, maps_template, output_variables, spatial_chunks
from survey_proc.errors import CoverageError, OptionError, SurveyProcError
from survey_proc.estimators import Estimator, Manifest, load_estimator, load_manifest, packaged_models
from survey_proc.ssp import FOREGROUND_LAW, surface_density_factor
from survey_proc.stores import (
    Flag,
    content_fingerprint,
    create_or_resume,
    flux_unit_cgs,
    make_regions,
    open_input_store,
    pending_regions,
    pixel_scale_arcsec,
    release_store,
    run_signature,
    spatial_dims,
)

log = logging.getLogger(__name__)


def prepare_cube(rc: RunConfig) -> CubeJob:
    """Validate the cube and the model, write (or resume) the maps store; returns the regions left.

    The maps store stays locked for this process (:func:`survey_proc.stores.release_store` lets
    go; :func:`~survey_proc.engine.run` and ``run_many`` do when the run ends)."""
    model_named = rc.model is not None or config.get("run.model") != "default"  # only the packaged default falls back
    rc = rc.resolved()
    manifest = load_manifest(rc.model)
    cube = open_input_store(rc.cube, manifest.input.feature_dim, require_redshift=rc.redshift is None)
    redshift = float(rc.redshift if rc.redshift is not None else cube.attrs.get("redshift", 0.0))
    rc, manifest = _covering_model(rc, manifest, cube, redshift, model_named)
    _warn_caveats(manifest)
    estimator = load_estimator(rc.model, device="cpu")  # fail fast on a bad file (workers use rc.device)
    min_snr, min_snr_source = resolve_min_snr(rc, manifest)
    mw_ebv, mw_source = resolve_mw_ebv(rc, cube, cube[manifest.input.feature_dim].values)
    _check_options(redshift, min_snr)
    notes = fixed_by_manifest(manifest)
    for note in notes:
        log.warning(f"note: {note}")
    fingerprint = content_fingerprint(rc.cube)
    mass_dex, mass_how = resolve_mass_density(manifest, cube, redshift)
    derived = derived_variables(mass_how) if mass_dex is not None else []
    provenance = _provenance(manifest, rc, cube, redshift, min_snr, estimator)
    template = maps_template(cube, manifest, provenance, derived)
    run_flags, lsf_offset = _lsf_flags(manifest, rc.cube, redshift, template.attrs)
    template.attrs.update(input_fingerprint=fingerprint, min_snr_source=min_snr_source)
    template.attrs.update(mw_ebv=mw_ebv, mw_ebv_source=mw_source, mw_ebv_law=FOREGROUND_LAW)
    signature = _signature(cube, manifest, redshift, min_snr, fingerprint, mw_ebv)
    identity = "cube (or its content), model or options"
    if not rc.overwrite:
        _refuse_changed_content(rc.out, fingerprint)
    resumed = create_or_resume(rc.out, template, signature, rc.overwrite, identity=identity, inputs=[rc.cube])
    dims = spatial_dims(cube)
    regions = make_regions({d: cube.sizes[d] for d in dims}, spatial_chunks(cube))
    try:
        pending = pending_regions(rc.out, regions) if resumed else regions
    except BaseException:
        release_store(rc.out)
        raise
    if resumed and pending:
        log.info(f"resuming {rc.out}: {len(regions) - len(pending)} of {len(regions)} regions already done")
    opts = RegionOptions(
        cube=str(Path(rc.cube).resolve()),
        out=str(Path(rc.out).resolve()),
        model=str(manifest.path),
        redshift=redshift,
        min_snr=min_snr,
        device=str(rc.device),
        threads=int(rc.threads_per_worker),
        redshift_per_spectrum="redshift" in cube and cube["redshift"].dims == dims,
        run_flags=run_flags,
        mw_ebv=mw_ebv,
        lsf_offset_kms=lsf_offset,
        mass_density_dex=mass_dex,
    )
    names = [name for name, *_ in output_variables(manifest) + derived] + ["flag", "snr"]
    settings = {
        "model": f"{manifest.model_id} ({manifest.path})",
        "redshift": f"{redshift:g}" + (" (--redshift)" if rc.redshift is not None else " (the cube's)"),
        "min_snr": f"{min_snr:g} ({min_snr_source})",
        "Milky Way E(B-V)": f"{mw_ebv:g} ({mw_source}; {FOREGROUND_LAW})",
        **({"stellar mass surface density": mass_how} if mass_how else {}),
        "run options": json.dumps(template.attrs["run_options"]),
        "notes": notes,
    }
    return CubeJob(
        rc=rc,
        manifest=manifest,
        regions=regions,
        pending=pending,
        opts=opts,
        names=names,
        binned=PIXEL_MAP in cube,
        settings=settings,
    )


#: the S/N threshold of a model whose manifest sets none, when nothing else does
DEFAULT_MIN_SNR = 5.0


def resolve_min_snr(rc: RunConfig, manifest: Manifest) -> tuple[float, str]:
    """The S/N per Angstrom under which spectra are flagged ``low_snr``, and where it came from:
    ``--min-snr``, else ``survey-proc.run.min-snr`` when set (over the manifest's), else the model
    manifest's ``min_snr``, else :data:`DEFAULT_MIN_SNR`."""
    if rc.min_snr is not None:
        return float(rc.min_snr), "--min-snr"
    configured = config.get("run.min-snr", None)
    if configured is not None:
        over = f", over the manifest's {manifest.min_snr:g}" if manifest.min_snr else ""
        return float(configured), f"survey-proc.run.min-snr{over}"
    if manifest.min_snr:
        return float(manifest.min_snr), f"model {manifest.name}'s manifest"
    return DEFAULT_MIN_SNR, "the default"


def fixed_by_manifest(manifest: Manifest) -> list[str]:
    """A sentence for each setting the user changed that the model's manifest fixes (no effect)."""
    changed, notes = config.overrides(), []
    if "run.batch-size" in changed and manifest.batch_size:
        notes.append(
            f"survey-proc.run.batch-size = {changed['run.batch-size']} has no effect: model {manifest.name}'s "
            f"manifest fixes batch_size = {manifest.batch_size} (run.cpu-batch-size caps it on CPUs)"
        )
    fixed = getattr(manifest.input, "max_masked_fraction", None)
    if "run.max-masked-fraction" in changed and fixed is not None:
        notes.append(
            f"survey-proc.run.max-masked-fraction = {changed['run.max-masked-fraction']} has no effect: model "
            f"{manifest.name}'s manifest fixes input.max_masked_fraction = {fixed:g}"
        )
    return notes


def _covering_model(
    rc: RunConfig, manifest: Manifest, cube: xr.Dataset, redshift: float, model_named: bool
) -> tuple[RunConfig, Manifest]:
    """The run's config and manifest once the model is known to cover the cube: the model's own, or
    the fallback's when the packaged default does not cover it and no model was named."""
    try:
        manifest.input.check_store(cube, redshift, rc.cube, manifest.name)
    except CoverageError as exc:
        fallback = None if model_named else _fallback_model(cube, redshift, rc.cube, exc)
        if fallback is None:
            raise CoverageError(f"{exc}{_covering_alternatives(manifest, cube, redshift, rc.cube)}") from None
        return replace(rc, model=fallback), load_manifest(fallback)
    return rc, manifest


def _covering_alternatives(manifest: Manifest, cube: xr.Dataset, redshift: float, path: str) -> str:
    """' Packaged <kind> models that cover it: NAME (range), ...; run with --model NAME.': the shipped
    bundles of the same estimator kind and input as ``manifest`` that cover the cube ('' if none)."""
    found = []
    for name in packaged_models():
        try:
            other = load_manifest(name)
            same_kind = (other.estimator, other.input_kind) == (manifest.estimator, manifest.input_kind)
            if other.path == manifest.path or not same_kind:
                continue
            other.input.check_store(cube, redshift, path, name)
        except SurveyProcError:
            continue
        spec = other.input
        found.append((name, f"{name} ({spec.wave_start:.0f}-{spec.wave_stop:.0f} A {spec.frame}-frame)"))
    if not found:
        return ""
    kind = {"fit": "fit", "ppxf": "pPXF"}.get(manifest.estimator, "network")
    return f" Packaged {kind} models that cover it: {', '.join(d for _, d in found)}; run with --model {found[0][0]}."


def _fallback_model(cube: xr.Dataset, redshift: float, path: str, exc: CoverageError) -> str | None:
    """``survey-proc.run.fallback-model`` when the default model does not cover a cube (e.g. the
    default reads rest 4750-8800 A, which MUSE covers only to z = 0.062) and the fallback does;
    None (the default's error stands) otherwise. Logged as a warning, recorded in the maps' model_id."""
    fallback = config.get("run.fallback-model", None)
    if not fallback:
        return None
    try:
        manifest = load_manifest(fallback)
        manifest.input.check_store(cube, redshift, path, manifest.name)
    except SurveyProcError:  # a fallback that is missing, broken or does not cover the cube either
        return None
    reason = str(exc).split(": ", 1)[-1].split(" (")[0]
    log.warning(
        f"note: the default model does not cover {path} ({reason}); using {fallback} "
        f"({manifest.raw.get('description', manifest.name)})"
    )
    return str(fallback)


def _warn_caveats(manifest: Manifest) -> None:
    """Say what a model's manifest says it gets wrong (``caveats``: known failures on real data)
    before any work, so a user reads it beside the maps (they keep it as ``model_caveats``)."""
    for caveat in manifest.raw.get("caveats", []):
        log.warning(f"note: model {manifest.name}: {caveat}")


def _lsf_flags(manifest: Manifest, cube: str, redshift: float, attrs: dict) -> tuple[int, float]:
    """(flag bits every estimate of this run gets, the LSF offset the engine corrects sigma by).

    The offset is the data's instrumental resolution against the model's training LSF, in quadrature
    (recorded in the maps as ``lsf_offset_kms``; models that read the store's LSF, like the fit,
    declare none). A network's sigma is corrected for it; beyond the manifest's tolerance (how far
    the correction was measured to hold) every estimate is also flagged ``lsf_mismatch``."""
    spec = manifest.input
    axis, lsf = read_feature_axis(cube, str(manifest.path))
    offset = spec.lsf_offset_kms(axis, lsf, redshift)
    if offset is None:
        return 0, 0.0
    attrs["lsf_offset_kms"] = round(offset, 1)
    correct = offset if offset and "sigma" in manifest.output_names else 0.0
    if correct:
        attrs["sigma_lsf_correction"] = f"sigma^2 - ({offset:+.1f} km/s)^2: the data's LSF against the training LSF"
        log.info(f"{manifest.name}'s sigma corrected in quadrature for the data's LSF ({offset:+.1f} km/s)")
    if abs(offset) <= spec.lsf_tolerance_kms():
        return 0, correct
    log.warning(
        f"note: the data's instrumental resolution is {'broader' if offset > 0 else 'sharper'} than the one "
        f"{manifest.name} was trained with by {abs(offset):.0f} km/s in quadrature, beyond the "
        f"{spec.lsf_tolerance_kms():.0f} km/s to which its sigma correction holds: every estimate is flagged "
        "lsf_mismatch; --method fit matches templates to the data's own resolution"
    )
    return int(Flag.LSF_MISMATCH), correct


#: the largest foreground colour excess accepted (the SFD map's dust-lane maxima are a few mag; optical
#: spectra behind more are not worth fitting)
MAX_MW_EBV = 2.0


def resolve_mw_ebv(rc: RunConfig, cube: xr.Dataset, axis: np.ndarray) -> tuple[float, str]:
    """The Milky Way foreground E(B-V) to undo and where it came from: ``--mw-ebv``, else the cube's
    attribute ``ebv_mw`` (ingest records MaNGA's EBVGAL there), else 0. Only spectra (a wavelength
    ``axis``) can be corrected here."""
    if rc.mw_ebv is not None:
        value, source = rc.mw_ebv, "--mw-ebv"
    elif cube.attrs.get("ebv_mw") is not None:
        value, source = cube.attrs["ebv_mw"], "the cube's ebv_mw"
    else:
        return 0.0, "none given"
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"Milky Way E(B-V) {value!r} ({source}) is not a number") from None
    if not (np.isfinite(value) and 0.0 <= value <= MAX_MW_EBV):
        raise OptionError(f"Milky Way E(B-V) {value:g} ({source}) is outside 0-{MAX_MW_EBV:g} mag")
    if value and not np.issubdtype(np.asarray(axis).dtype, np.number):
        raise OptionError(
            f"Milky Way E(B-V) {value:g} ({source}): the foreground is undone on spectra; this store holds "
            "photometry in bands: correct the band fluxes for it before making the store"
        )
    return value, source


def resolve_mass_density(manifest: Manifest, cube: xr.Dataset, redshift: float) -> tuple[float | None, str]:
    """(log10 of what turns the fit's ``log_mass_flux`` into log10 Sigma* in M_sun/kpc^2, or None; how,
    or why not). Sigma* = 4 pi (1+z)^5 f (M/L) / Omega needs no distance, only flux-calibrated spectra
    of pixels of a known solid angle: a cube's spaxels, not a catalogue's spectra (fibres, bins)."""
    if MASS_FLUX not in manifest.output_names:
        return None, ""
    if spatial_dims(cube) != ("y", "x") or "redshift" in cube:
        return None, "not derived: the store holds spectra of fibres or bins, not spaxels of one pixel area"
    scale = pixel_scale_arcsec(dict(cube.attrs))
    if not scale:
        return None, "not derived: the cube has no pixel scale (attribute pixel_scale_arcsec or a celestial WCS)"
    unit, why = flux_unit_cgs(str(cube["flux"].attrs.get("units", "")), scale)
    if unit is None:
        return None, f"not derived: {why}"
    offset = float(np.log10(surface_density_factor(redshift, scale, unit)))
    return (
        offset,
        f"4 pi (1+z)^5 f M/L / Omega_pixel at z {redshift:g}, {scale:g} arcsec/pixel, flux unit {unit:g} erg/s/cm2/A",
    )


def _check_options(redshift: float, min_snr: float) -> None:
    """Refuse a redshift or S/N threshold no spectrum could be fitted with."""
    if not (np.isfinite(redshift) and -0.01 <= redshift < 10):
        raise OptionError(f"redshift {redshift:g} is outside the plausible range [-0.01, 10): give a finite --redshift")
    if not (np.isfinite(min_snr) and min_snr >= 0):
        raise OptionError(f"--min-snr {min_snr:g}: give a finite S/N per Angstrom >= 0 (e.g. 3)")


def _refuse_changed_content(out: str, fingerprint: str) -> None:
    """Name the reason when maps exist for the same cube path but other content (re-ingested, edited):
    they are stale, and only --overwrite replaces them."""
    import zarr

    try:
        made_from = zarr.open_group(out, mode="r").attrs.get("input_fingerprint")
    except Exception:
        return
    if made_from and made_from != fingerprint:
        raise SurveyProcError(
            f"{out} holds maps made from other content of this cube (content fingerprint {made_from} then, "
            f"{fingerprint} now: the cube was re-ingested or changed since); they are out of date: pass "
            "--overwrite to compute them again"
        )


def _signature(
    cube: xr.Dataset, manifest: Manifest, redshift: float, min_snr: float, fingerprint: str, mw_ebv: float = 0.0
) -> str:
    """Identity of a run's numbers: the cube's content (:func:`survey_proc.stores.content_fingerprint`),
    shape, grid and provenance, the model file, the options."""
    axis = cube[manifest.input.feature_dim].values  # wavelengths or band names
    ends = [axis[0], axis[-1]]
    ident = {
        "content": fingerprint,
        "sizes": {d: n for d, n in cube.sizes.items() if not str(d).startswith("region_")},
        "wave": [float(e) for e in ends] if np.issubdtype(axis.dtype, np.number) else [str(e) for e in ends],
        "source": str(cube.attrs.get("source", "")),
        "mock_config": str(cube.attrs.get("mock_config", "")),
        "model_sha256": manifest.digest,
        "manifest_sha256": manifest.manifest_digest,
        "model": manifest.name,
        "estimator": manifest.estimator,
        "redshift": redshift,
        "min_snr": min_snr,
    }
    if mw_ebv:  # only when used: maps of runs without it keep their signature
        ident["mw_ebv"] = mw_ebv
    if cube.attrs.get("binning"):  # a catalogue of bins: how it was binned is part of its identity
        ident["binning"] = str(cube.attrs["binning"])
    return run_signature(ident)


def _json_safe(values: dict) -> dict:
    """``values`` as a JSON object attribute: numbers stay numbers, anything else becomes its str."""
    return json.loads(json.dumps(values, default=str))


def _provenance(
    manifest: Manifest, rc: RunConfig, cube: xr.Dataset, redshift: float, min_snr: float, estimator: Estimator
) -> dict:
    """The maps store's provenance attributes; ``network_precision``: the network's arithmetic on
    the workers' device (``float32``/``bfloat16``/``tf32``; empty for estimators without a network)."""
    training = manifest.raw.get("training", {})
    return {
        "title": "survey-proc maps",
        "model_id": manifest.model_id,
        "model_name": manifest.name,
        "model_sha256": manifest.digest,
        "model_software": _json_safe(dict(estimator.provenance)),
        "model_estimator": manifest.estimator,
        "model_manifest": str(manifest.path),
        "model_manifest_sha256": manifest.manifest_digest,
        "model_trainset_hash": training.get("trainset_hash", ""),
        "model_caveats": " ".join(manifest.raw.get("caveats", [])),
        "software": f"survey-proc {__version__}",
        "cube": str(Path(rc.cube).resolve()),
        "cube_source": str(cube.attrs.get("source", "")),
        "redshift": redshift,
        "min_snr": min_snr,
        "network_precision": estimator.precision_on(str(rc.device)),  # the workers', not this CPU check's
        "run_options": _json_safe({k: v for k, v in asdict(rc).items() if k != "progress"}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": "running",
    }
