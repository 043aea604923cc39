"""LoRA adapters of a SANA transformer in diffusers' format: what they adapt, their file, sampling with one.

A LoRA file is what ``SanaPipeline.save_lora_weights`` writes (``pytorch_lora_weights.safetensors``):
for each adapted module ``M`` of the transformer, ``transformer.M.lora_A.weight`` (``[rank, in]``)
and ``transformer.M.lora_B.weight`` (``[out, rank]``), with peft's ``LoraConfig`` (rank, alpha,
targets) in the header's ``lora_adapter_metadata``. Modules are named as diffusers names them
(``transformer_blocks.3.attn1.to_q``); a ``--lora-targets`` name matches a module by peft's rule (the
whole name, or its last dotted parts). Everything here that only checks reads configs and
safetensors headers (the transformer is built on the meta device), so a bad adapter is refused
before a model is loaded or an output written.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanatool.errors import InputError, ModelDirError

#: The file name diffusers' ``save_lora_weights`` writes and ``load_lora_weights(DIR)`` reads.
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
#: The prefix of every key of a SANA pipeline's LoRA file (the component it adapts).
TRANSFORMER_PREFIX = "transformer."
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def transformer_skeleton(config: dict[str, Any]) -> Any:
    """A ``SanaTransformer2DModel`` of ``config`` on the meta device: module names and shapes, no memory."""
    import torch
    from diffusers import SanaTransformer2DModel

    from sanatool.arch import model_kwargs

    with torch.device("meta"):
        return SanaTransformer2DModel(**model_kwargs(config))


def adaptable_modules(model: Any) -> dict[str, tuple[int, ...]]:
    """The modules a LoRA can adapt (linears, and convolutions that are not grouped) → their weight shape."""
    import torch

    found: dict[str, tuple[int, ...]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or (
            isinstance(module, torch.nn.Conv2d) and module.groups == 1
        ):
            found[name] = tuple(module.weight.shape)
    return found


def target_matches(target: str, name: str) -> bool:
    """peft's rule for a ``target_modules`` list entry: the module's whole name or its last dotted parts."""
    return name == target or name.endswith(f".{target}")


def check_targets(config: dict[str, Any], targets: Sequence[str]) -> dict[str, int]:
    """Refuse a ``--lora-targets`` name that matches no adaptable module; return target → modules matched."""
    modules = adaptable_modules(transformer_skeleton(config))
    counts = {t: sum(target_matches(t, name) for name in modules) for t in targets}
    missing = [t for t, n in counts.items() if n == 0]
    if missing:
        leaves = sorted({_leaf(name) for name in modules})
        raise InputError(
            f"--lora-targets {','.join(missing)} matches no linear or convolution of this transformer; "
            f"name modules as diffusers does, e.g. {', '.join(leaves)} (or a longer dotted name)"
        )
    return counts


def _leaf(name: str) -> str:
    """The short name a target usually gives: ``attn1.to_out.0`` → ``to_out.0``, ``ff.conv_point`` → ``conv_point``."""
    parts = name.split(".")
    if parts[-1].isdigit() and len(parts) > 1:
        return ".".join(parts[-2:])
    return parts[-1]


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA to sample with: its safetensors file and the scale its update is multiplied by."""

    path: Path
    scale: float = 1.0

    def record(self) -> dict[str, Any]:
        """What a samples manifest records of it: the file's name and content fingerprint, and the scale."""
        return {"file": self.path.name, "fingerprint": file_fingerprint(self.path), "scale": self.scale}


def file_fingerprint(path: Path) -> str:
    """A short hash of a file's bytes (a LoRA file is small: tens to hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def lora_file(path: str | os.PathLike) -> Path:
    """The LoRA weights a path names: a dir holding ``pytorch_lora_weights.safetensors``, or a ``.safetensors`` file."""
    path = Path(path).expanduser()
    if path.is_dir():
        inner = path / LORA_WEIGHTS_NAME
        if not inner.is_file():
            raise InputError(f"{path} holds no {LORA_WEIGHTS_NAME}; give a LoRA dir or a .safetensors file")
        return inner
    if not path.is_file():
        raise InputError(f"LoRA {path} does not exist; give a LoRA dir or a .safetensors file")
    if path.suffix != ".safetensors":
        raise InputError(f"LoRA {path} is not a .safetensors file; only safetensors LoRA files are read")
    return path


def parse_lora_spec(text: str) -> LoraSpec:
    """``PATH[:SCALE]`` → a :class:`LoraSpec` (scale 1.0 by default).

    Paths may hold ``:``: a string naming an existing path is that path; otherwise the part after the
    last ``:`` is the scale when it reads as a number.
    """
    scale = 1.0
    path_text = text
    head, sep, tail = text.rpartition(":")
    if sep and head and not Path(text).expanduser().exists():
        try:
            scale = float(tail)
        except ValueError:
            pass  # no scale: the ':' belongs to the path
        else:
            path_text = head
            if not math.isfinite(scale) or scale < 0:
                raise InputError(f"--lora {text}: the scale must be a finite number ≥ 0, got {tail}")
    if sep and path_text == text and not Path(text).expanduser().exists():
        raise InputError(
            f"--lora {text}: no such LoRA; give PATH[:SCALE], PATH a LoRA dir or .safetensors file and SCALE a number"
        )
    return LoraSpec(lora_file(path_text), scale)


def check_lora_fits(path: Path, config: dict[str, Any]) -> int:
    """Refuse a LoRA file whose keys or shapes do not fit a transformer of ``config``; return its rank.

    Reads the safetensors header only.
    """
    from sanatool.io.safetensors import read_header

    try:
        tensors, _ = read_header(path)
    except ModelDirError as err:
        raise InputError(f"cannot read the LoRA {path}: {err}") from err
    if not tensors:
        raise InputError(f"the LoRA {path} holds no tensors")
    modules = adaptable_modules(transformer_skeleton(config))
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, info in tensors.items():
        suffix = next((s for s in _LORA_SUFFIXES if key.endswith(s)), None)
        if not key.startswith(TRANSFORMER_PREFIX) or suffix is None:
            raise InputError(
                f"{path} is not a diffusers LoRA file of a SANA transformer (tensor {key}); expected "
                f"{TRANSFORMER_PREFIX}MODULE.lora_A.weight / lora_B.weight, as SanaPipeline.save_lora_weights writes"
            )
        module = key[len(TRANSFORMER_PREFIX) : -len(suffix)]
        pairs.setdefault(module, {})[suffix[1:7]] = info.shape
    ranks = set()
    for module, shapes in sorted(pairs.items()):
        weight = modules.get(module)
        if weight is None:
            raise InputError(
                f"the LoRA {path} adapts {module}, which this transformer does not have: it was made for "
                "another model; use a LoRA trained on this one"
            )
        a, b = shapes.get("lora_A"), shapes.get("lora_B")
        if a is None or b is None:
            raise InputError(
                f"the LoRA {path} has lora_A or lora_B of {module} missing; the file is incomplete"
            )
        fits = len(a) == len(weight) and len(b) == len(weight) and a[0] == b[1] and b[0] == weight[0]
        fits = fits and a[1] == weight[1] and tuple(a[2:]) == tuple(weight[2:])
        if not fits:
            raise InputError(
                f"the LoRA {path} does not fit {module} (lora_A {list(a)}, lora_B {list(b)} against the weight "
                f"{list(weight)}): it was made for another model; use a LoRA trained on this one"
            )
        ranks.add(a[0])
    return max(ranks)


def apply_loras(pipe: Any, specs: Iterable[LoraSpec]) -> list[str]:
    """Load LoRAs into a pipeline's transformer unmerged, each at its scale; return their adapter names.

    diffusers' ``load_lora_weights`` (which reads the rank and alpha from the file's metadata) and
    ``set_adapters``: the base weights stay as they are, the adapters add ``scale × B·A·x``.
    """
    names: list[str] = []
    scales: list[float] = []
    for index, spec in enumerate(specs):
        name = f"lora_{index}"
        try:
            pipe.load_lora_weights(
                str(spec.path.parent), weight_name=spec.path.name, adapter_name=name, local_files_only=True
            )
        except (ValueError, KeyError, RuntimeError) as err:
            raise InputError(f"cannot load the LoRA {spec.path}: {err}") from err
        names.append(name)
        scales.append(spec.scale)
    if names:
        pipe.set_adapters(names, adapter_weights=scales)
    return names
