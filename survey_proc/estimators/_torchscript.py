"""TorchScript model bundles: a scripted ``nn.Module`` whose forward maps (n, C, L) to a dict.

The scripted module returns a ``Dict[str, Tensor]`` with every output of the manifest in physical
units (label scaling lives inside the module), ``<name>_err`` where declared, and the scores used
by the manifest's flag rules (e.g. ``ood_score``).

On a GPU, batches go through a pinned (page-locked) host buffer with asynchronous copies, the
batch size is chosen from the device's free memory (``survey-proc.gpu.*``; halved and retried if
the device runs out), convolutions run in IEEE float32 (not TF32, torch's default for cuDNN:
``survey-proc.gpu.tf32``), and the threads of a worker take turns on the device (one lock per
process), so reads and preprocessing of other regions overlap with inference while torch's
caching allocator alone manages the device memory.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch

from survey_proc import config
from survey_proc.cluster import tune_heap
from survey_proc.errors import ModelError
from survey_proc.estimators._base import Estimator, Manifest
from survey_proc.preprocess import BatchMeta


def gpu_batch_size(free_bytes: float, bytes_per_spectrum: float, fraction: float, lo: int, hi: int) -> int:
    """Spectra per forward pass: a power of two using ``fraction`` of ``free_bytes``, within [lo, hi]."""
    n = int(free_bytes * fraction / max(bytes_per_spectrum, 1.0))
    n = 1 << max(n.bit_length() - 1, 0) if n > 0 else lo
    return int(min(max(n, lo), hi))


def _bytes_per_spectrum(module, device: torch.device, shape: tuple[int, int], n: int = 256) -> float:
    """Peak device memory of a forward pass per spectrum, measured on ``n`` zero spectra."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        module(torch.zeros((n, *shape), device=device))
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / n


#: the device's turn: one batch at a time per process, whichever estimator (and thread) runs it, so
#: that the free memory a batch size was chosen from is there when the batch runs
_GPU_LOCK = threading.Lock()


def batch_size_for(device: torch.device, manifest: Manifest, module) -> int:
    """The manifest's batch size on CPU; on a GPU ``survey-proc.gpu.batch-size``, or from free memory
    (spectral models; photometric ones, whose batches are small SEDs or one image tile, keep theirs)."""
    cpu_batch = int(manifest.batch_size or config.get("run.batch-size") or 1024)
    if device.type != "cuda":
        return cpu_batch
    configured = config.get("gpu.batch-size", "auto")
    if configured not in (None, "auto"):
        return int(configured)
    spec = manifest.input
    if spec.kind != "spectrum":
        return cpu_batch
    per_spectrum = _bytes_per_spectrum(module, device, (len(spec.channels), spec.wave.size))
    free, _ = torch.cuda.mem_get_info(device)
    return gpu_batch_size(
        free,
        per_spectrum,
        float(config.get("gpu.memory-fraction", 0.5)),
        cpu_batch,
        int(config.get("gpu.max-batch-size", 65536)),
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device ran out of memory (``torch.OutOfMemoryError`` when raised by
    eager code; a ``RuntimeError`` naming it when raised inside a TorchScript module)."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc)


def pinned_rows(rows: int, batch_size: int) -> int:
    """Rows of the pinned host buffer for a chunk of ``rows`` spectra: the next power of two, at most
    ``batch_size`` (and at least ``rows``)."""
    return max(int(rows), min(1 << max(int(rows) - 1, 0).bit_length(), int(batch_size)))


PRECISIONS = ("float32", "bfloat16", "auto")


def native_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic in hardware (AVX512-BF16 or AMX), as oneDNN sees it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_precision(requested: str, module) -> str:
    """The arithmetic a bundle's network runs in on a CPU: ``float32`` or ``bfloat16``.

    ``auto`` picks bfloat16 where the CPU does it natively and float32 elsewhere. For the default CNN
    bfloat16 is about 1.8x faster and shifts outputs by ~0.05-0.15 of their uncertainties (sigma
    by +2-4 km/s), hence float32 is the default (docs/precision.md).
    Bundles exported before the switch existed (no ``net_bf16`` attribute) always run in float32.
    """
    if requested not in PRECISIONS:
        raise ModelError(f"survey-proc.run.cpu-precision is {requested!r}; expected one of {', '.join(PRECISIONS)}")
    if requested == "float32" or not hasattr(module, "net_bf16") or not hasattr(module, "net"):
        return "float32"
    if requested == "auto" and not native_bf16():
        return "float32"
    return "bfloat16"


class TorchScriptEstimator(Estimator):
    """Runs a TorchScript bundle on a device, in fixed-size batches, without gradients."""

    def __init__(self, manifest: Manifest, device: str = "cpu", threads: int | None = None) -> None:
        self.manifest = manifest
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        try:
            self.module = torch.jit.load(str(manifest.file), map_location=self.device)
        except Exception as exc:  # torch raises RuntimeError/ValueError on a bad archive
            raise ModelError(
                f"model file {manifest.file} could not be loaded as TorchScript "
                f"({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from exc
        self.module.eval()
        self._gpu = self.device.type == "cuda"
        self._lock = _GPU_LOCK if self._gpu else threading.Lock()
        self._pinned: torch.Tensor | None = None
        self.precision = "float32"  #: arithmetic of the network (:func:`cpu_precision` on CPUs)
        self._warmed = False
        self._systematics = manifest.error_systematics  #: checked once, added to every batch's errors
        if self._gpu:
            with self._lock:
                self._tune_for_gpu()
        else:
            self.batch_size = batch_size_for(self.device, manifest, self.module)
            self._tune_for_cpu()

    def _tune_for_gpu(self) -> None:
        """GPU inference: IEEE float32 convolutions unless ``gpu.tf32``, a frozen module (BatchNorm folded
        into the convolutions, as on CPUs), and the batch size from the free device memory."""
        tf32 = bool(config.get("gpu.tf32", False))
        mode = "tf32" if tf32 else "ieee"  # torch's default for cuDNN convolutions is TF32
        torch.backends.cudnn.conv.fp32_precision = mode
        torch.backends.cuda.matmul.fp32_precision = mode
        self.precision = "tf32" if tf32 else "float32"
        self._freeze()
        self.batch_size = batch_size_for(self.device, self.manifest, self.module)

    def _freeze(self) -> None:
        if config.get("run.freeze-torchscript", True):
            with contextlib.suppress(Exception):  # a module that cannot be frozen runs as exported
                self.module = torch.jit.freeze(self.module)

    def _tune_for_cpu(self) -> None:
        """CPU inference: cache-sized batches, and a frozen module where freezing works.

        Activations of 1024 spectra overflow the CPU caches: batches of ``run.cpu-batch-size``
        (default 256) run ~1.8x faster per spectrum; freezing (weights as constants, folded ops) ~10 %.
        Neither changes the numbers beyond float rounding. The process keeps its freed heap for the
        next batch (:func:`survey_proc.cluster.tune_heap`; local workers start that way).
        """
        tune_heap()
        cpu_batch = config.get("run.cpu-batch-size")
        if cpu_batch:
            self.batch_size = min(self.batch_size, int(cpu_batch))
        self.precision = cpu_precision(config.get("run.cpu-precision", "float32"), self.module)
        if self.precision == "bfloat16":
            self.module.net.to(torch.bfloat16)
            self.module.net_bf16 = True
        self._freeze()

    def precision_on(self, device: str) -> str:
        """``float32`` or ``tf32`` (``gpu.tf32``) on a GPU: bfloat16 is a CPU setting, TF32 a GPU one."""
        if str(device).startswith("cuda"):
            return "tf32" if config.get("gpu.tf32", False) else "float32"
        return self.precision

    def warm_up(self) -> None:
        """Two forward passes on a batch of zeros: TorchScript's profiling executor optimises the graph
        during the first calls and oneDNN builds its kernels, so no region pays for that. Once per
        estimator: the next run on the same workers (a survey, a benchmark) finds it warm."""
        spec = self.manifest.input
        if spec.kind != "spectrum" or self._warmed:  # photometric inputs have shapes of their own
            return
        x = np.zeros((min(self.batch_size, 4096), len(spec.channels), spec.wave.size), np.float32)
        for _ in range(2):
            self.predict(x)
        self._warmed = True

    def _staged(self, chunk: np.ndarray) -> torch.Tensor:
        """``chunk`` on the device; on a GPU copied through the pinned buffer, asynchronously.

        The buffer holds the rows of the largest chunk seen so far (rounded up to a power of two),
        not a whole batch: a batch size chosen from an 80 GB device would pin gigabytes of host
        memory per worker for regions of a thousand spectra."""
        batch = torch.from_numpy(chunk)
        if not self._gpu:
            return batch
        if self._pinned is None or self._pinned.shape[1:] != batch.shape[1:] or self._pinned.shape[0] < batch.shape[0]:
            rows = pinned_rows(batch.shape[0], self.batch_size)
            self._pinned = None  # back to torch's pinned-memory cache before the larger one is taken
            self._pinned = torch.empty((rows, *batch.shape[1:]), dtype=batch.dtype, pin_memory=True)
        staged = self._pinned[: batch.shape[0]]
        staged.copy_(batch)
        return staged.to(self.device, non_blocking=True)

    def _predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        pieces: dict[str, list[np.ndarray]] = {}
        start = 0
        with torch.inference_mode():
            while start < x.shape[0]:
                stop = start + self.batch_size
                try:
                    out = self.module(self._staged(np.ascontiguousarray(x[start:stop])))
                    got = {key: value.float().cpu().numpy() for key, value in out.items()}
                except RuntimeError as exc:  # TorchScript reports the device's OOM as a plain RuntimeError
                    if not (self._gpu and is_out_of_memory(exc) and min(self.batch_size, x.shape[0] - start) > 1):
                        raise
                    got = None
                if got is None:  # out of the handler, so the failed batch's tensors are released
                    torch.cuda.empty_cache()  # another process took the memory: smaller batches from here on
                    self.batch_size = max(1, min(self.batch_size, x.shape[0] - start) // 2)
                    continue
                for key, value in got.items():  # .cpu() waited for the batch: the pinned buffer is free again
                    pieces.setdefault(key, []).append(value)
                start = stop
        if not pieces:
            return {}
        return {k: np.concatenate(v) for k, v in pieces.items()}

    def predict(self, x: np.ndarray, meta: BatchMeta | None = None) -> dict[str, np.ndarray]:
        """Run the model over ``x`` (n, C, L) float32; returns numpy arrays per output (``meta`` unused),
        the errors with the manifest's ``error_systematics`` added in quadrature."""
        if self._gpu:
            with self._lock:  # one batch at a time on the device; the pinned buffer is shared
                out = self._predict(x)
        else:
            out = self._predict(x)
        return self._systematics.add(out)
