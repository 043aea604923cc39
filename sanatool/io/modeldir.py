"""Model dirs in the diffusers layout: open, validate, fingerprint, write, and record provenance.

A *model dir* is either a pipeline dir (``model_index.json`` + ``transformer/`` + other
components) or a bare transformer dir (``config.json`` + ``diffusion_pytorch_model*.safetensors``,
sharded with an index when large). Opening one reads only JSON and safetensors headers, so it
is fast and never allocates tensors; everything a config or index claims is checked against the
weights before anything large happens. This module never imports torch at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanatool.arch import (
    QK_NORM_PROBE,
    TRANSFORMER_CLASS,
    block_index,
    expected_shapes,
    inner_dim,
    model_kwargs,
    validate_config,
)
from sanatool.errors import InputError, ModelDirError
from sanatool.formatting import format_block_list
from sanatool.io.jsonl import read_json_object
from sanatool.io.modelfiles import (
    WeightSet,
    check_model_files,
    hub_repo_id,
    resolve_variant,
    walk_model_files,
    weight_sets,
)
from sanatool.io.outputs import link_or_copy
from sanatool.io.provenance import PROVENANCE_NAME
from sanatool.io.safetensors import TensorEntry, TensorInfo, read_header, write_sharded
from sanatool.progress import ProgressFn, no_progress

WEIGHTS_BASENAME = "diffusion_pytorch_model"
BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = {"tiny-shapes": "tiny-shapes"}


def builtin_root() -> Path:
    """Where the package's built-in models live."""
    return Path(__file__).parent.parent / "data"


def resolve_model_path(spec: str | os.PathLike) -> Path:
    """Turn a model argument (a path or ``builtin:NAME``) into a path."""
    text = str(spec)
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_MODELS:
            raise InputError(
                f"unknown built-in model {text}; available: {', '.join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)}"
            )
        path = builtin_root() / BUILTIN_MODELS[name]
        if not (path / "model_index.json").is_file():
            raise ModelDirError(
                f"the built-in model {text} is not installed in this copy of sanatool ({path}); "
                "reinstall the package or build it with examples/build_tiny_shapes.sh"
            )
        return path
    return Path(text).expanduser()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    return read_json_object(path, what, ModelDirError)


@dataclass
class TransformerDir:
    """A validated ``SanaTransformer2DModel`` directory: config plus tensor locations (no data loaded)."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    shard_files: list[Path]
    index_file: Path | None
    variant: str | None = None
    weight_sets: dict[str | None, WeightSet] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return int(self.config["num_layers"])

    @property
    def hidden_size(self) -> int:
        return inner_dim(self.config)

    @property
    def qk_norm(self) -> str | None:
        return self.config.get("qk_norm")

    @property
    def total_bytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())

    @property
    def num_params(self) -> int:
        return sum(info.numel for info in self.tensors.values())

    def dtypes(self) -> dict[str, int]:
        """Parameter count per dtype (a model is usually all one dtype)."""
        counts: dict[str, int] = {}
        for info in self.tensors.values():
            counts[info.dtype] = counts.get(info.dtype, 0) + info.numel
        return counts

    def block_tensors(self) -> dict[int, list[TensorInfo]]:
        """Tensors of each block, keyed by block index, in file order."""
        blocks: dict[int, list[TensorInfo]] = {}
        for name, info in self.tensors.items():
            index = block_index(name)
            if index is not None:
                blocks.setdefault(index, []).append(info)
        return dict(sorted(blocks.items()))

    def non_block_tensors(self) -> list[TensorInfo]:
        """Tensors outside ``transformer_blocks`` (embeddings, caption projection, output head)."""
        return [info for name, info in self.tensors.items() if block_index(name) is None]

    def fingerprint(self) -> str:
        """A short stable identity: hash of the config and every tensor's name, dtype and shape."""
        return fingerprint_of(self.config, self.tensors.values())


def fingerprint_of(config: dict[str, Any], tensors: Sequence[TensorInfo] | Any) -> str:
    """Hash of a config (without diffusers' bookkeeping keys) and tensor names, dtypes and shapes."""
    digest = hashlib.sha256()
    digest.update(json.dumps(model_kwargs(config), sort_keys=True).encode())
    for info in sorted(tensors, key=lambda t: t.name):
        digest.update(f"\n{info.name}|{info.dtype}|{list(info.shape)}".encode())
    return digest.hexdigest()[:16]


def open_transformer_dir(path: Path, variant: str | None = None) -> TransformerDir:
    """Open and validate a bare transformer dir (config, index, shards, shapes).

    ``variant`` picks a set of weights (``diffusion_pytorch_model.bf16.safetensors`` …); without it the
    default set is read, or the only set there is. The symlink rule is :func:`open_model_dir`'s.
    """
    config_path = path / "config.json"
    _refuse_non_model(path)
    config = _read_json(config_path, "config")
    validate_config(config, config_path)
    sets = weight_sets(path, WEIGHTS_BASENAME)
    chosen = _choose_set(path, sets, variant)
    weight_map = chosen.weight_map
    index_path = chosen.index
    tensors: dict[str, TensorInfo] = {}
    for shard in chosen.files:
        shard_tensors, _ = read_header(shard)
        for name, info in shard_tensors.items():
            if name in tensors:
                raise ModelDirError(
                    f"tensor {name} appears in two shards ({tensors[name].file.name}, {shard.name})"
                )
            if weight_map is not None and weight_map.get(name) != shard.name:
                raise ModelDirError(f"{index_path} disagrees with {shard.name} about where {name} lives")
            tensors[name] = info
    if weight_map is not None:
        missing = [name for name in weight_map if name not in tensors]
        if missing:
            raise ModelDirError(
                f"{index_path} lists {len(missing)} tensors missing from the shards, e.g. {missing[0]}"
            )
    tdir = TransformerDir(path, config, tensors, list(chosen.files), index_path, chosen.variant, sets)
    _check_shapes(tdir)
    return tdir


def _choose_set(path: Path, sets: dict[str | None, WeightSet], variant: str | None) -> WeightSet:
    if variant is not None:
        if variant not in sets:
            held = ", ".join(s.label for s in sets.values()) or "none"
            raise ModelDirError(f"--variant {variant}: {path} has no {variant} weights; it holds: {held}")
        return sets[variant]
    if None in sets:
        return sets[None]
    if len(sets) == 1:
        return next(iter(sets.values()))
    if sets:
        raise ModelDirError(
            f"{path} holds several weight variants ({', '.join(sorted(s.label for s in sets.values()))}) and no "
            "default set; pass --variant NAME to choose one"
        )
    if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
        raise ModelDirError(
            f"{path} holds pickle weights only; sanatool reads safetensors (convert with diffusers' save_pretrained)"
        )
    raise ModelDirError(f"{path} has a config.json but no {WEIGHTS_BASENAME}.safetensors (or sharded index)")


def _check_shapes(tdir: TransformerDir) -> None:
    blocks = set(tdir.block_tensors())
    if blocks != set(range(tdir.num_layers)):
        raise ModelDirError(
            f"{tdir.path}: config says num_layers={tdir.num_layers} but the weights hold blocks "
            f"{format_block_list(sorted(blocks)) or 'none'}; the config does not match the weights"
        )
    for name, shape in expected_shapes(tdir.config).items():
        info = tdir.tensors.get(name)
        if info is None:
            raise ModelDirError(
                f"{tdir.path}: tensor {name} is missing; this is not a complete {TRANSFORMER_CLASS}"
            )
        if info.shape != shape:
            raise ModelDirError(
                f"{tdir.path}: tensor {name} has shape {list(info.shape)} but config.json implies {list(shape)}; "
                "the config does not match the weights"
            )
    has_norm = QK_NORM_PROBE in tdir.tensors
    if has_norm != bool(tdir.qk_norm):
        state = "has" if has_norm else "lacks"
        raise ModelDirError(f"{tdir.path}: the weights {state} QK-norm but config qk_norm={tdir.qk_norm!r}")


@dataclass
class ModelDir:
    """An opened model dir: a pipeline or a bare transformer, plus its provenance."""

    path: Path
    kind: str  # "pipeline" or "transformer"
    transformer: TransformerDir
    model_index: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    #: The variant to load with (``from_pretrained(path, variant=model.variant)``); ``None`` = default files.
    variant: str | None = None
    #: Each weight-bearing component's sets of weights, keyed by variant (``None`` = default).
    weight_sets: dict[str, dict[str | None, WeightSet]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """What to call the model: ``ORG/NAME`` for a hub-cache snapshot, else the dir's name."""
        return hub_repo_id(self.path) or self.path.name

    @property
    def argument(self) -> str:
        """How to name this model in a command a message suggests: ``builtin:NAME`` or its path."""
        for name, folder in BUILTIN_MODELS.items():
            if self.path == builtin_root() / folder:
                return BUILTIN_PREFIX + name
        return str(self.path)

    def component_variant(self, component: str) -> str | None:
        """The variant to pass when loading ``component`` on its own: :attr:`variant` if it holds it, else ``None``."""
        return self.variant if self.variant in self.weight_sets.get(component, {}) else None

    @property
    def components(self) -> dict[str, tuple[str, str]]:
        """Pipeline components (name → (library, class)); a bare dir has only the transformer."""
        if self.model_index is None:
            return {"transformer": ("diffusers", TRANSFORMER_CLASS)}
        return {
            name: (value[0], value[1])
            for name, value in self.model_index.items()
            if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0]
        }

    def fingerprint(self) -> str:
        """The transformer's fingerprint (surgery only touches the transformer)."""
        return self.transformer.fingerprint()

    def require_pipeline(self, command: str) -> None:
        """Refuse a bare transformer dir for commands that need the text encoder and VAE."""
        missing = [c for c in ("text_encoder", "tokenizer", "vae", "scheduler") if c not in self.components]
        if self.kind != "pipeline" or missing:
            raise ModelDirError(
                f"`{command}` needs a pipeline dir (model_index.json with text_encoder, tokenizer, vae, scheduler); "
                f"{self.path} lacks {', '.join(missing) or 'model_index.json'}. Use a full diffusers SanaPipeline dir "
                "or builtin:tiny-shapes"
            )

    def component_config(self, component: str) -> dict[str, Any]:
        """A pipeline component's JSON config (``scheduler/scheduler_config.json``, else ``NAME/config.json``)."""
        name = "scheduler_config.json" if component == "scheduler" else "config.json"
        return _read_json(self.path / component / name, f"the {component} config")

    def transformer_out(self, out_root: Path) -> Path:
        """Where this model's transformer goes inside an output of the same layout."""
        return out_root / "transformer" if self.kind == "pipeline" else out_root


def _refuse_non_model(path: Path) -> None:
    """Raise :class:`ModelDirError` unless ``path`` holds a transformer's ``config.json`` (a LoRA is named)."""
    if (path / "config.json").is_file():
        return
    if (path / "pytorch_lora_weights.safetensors").is_file():
        raise ModelDirError(
            f"{path} is a LoRA, not a model dir: sample with it as `sanatool sample BASE_MODEL --lora {path}`"
        )
    raise ModelDirError(
        f"{path} is not a model dir: it has neither model_index.json (a diffusers pipeline) nor "
        "config.json (a bare SanaTransformer2DModel)"
    )


def open_model_dir(spec: str | os.PathLike, variant: str | None = None) -> ModelDir:
    """Open a pipeline or bare transformer dir (or ``builtin:NAME``), validating it fully.

    Reads only JSON and safetensors headers: fast on a 10 GB checkpoint, no tensor allocated. Every
    file is checked against the symlink rule (:mod:`sanatool.io.modelfiles`) first; ``variant`` (or the
    one set the dir holds) chooses the weights, see :func:`~sanatool.io.modelfiles.resolve_variant`.
    """
    path = resolve_model_path(spec)
    if not path.exists():
        raise ModelDirError(f"model dir {spec} does not exist")
    if not path.is_dir():
        raise ModelDirError(
            f"{spec} is a file, not a model dir (expected a diffusers directory); an original SANA checkpoint "
            "becomes one with `sanatool convert FILE --components PIPELINE_DIR -o DIR`"
        )
    if not (path / "model_index.json").is_file():
        # Before the files are walked: a wrong path (a home dir, /tmp) fails at once.
        _refuse_non_model(path)
    check_model_files(path)
    provenance: dict[str, Any] = {}
    if (path / PROVENANCE_NAME).is_file():
        provenance = _read_json(path / PROVENANCE_NAME, "provenance file")
    index_path = path / "model_index.json"
    if not index_path.is_file():
        sets = {"transformer": weight_sets(path, WEIGHTS_BASENAME)}
        chosen = resolve_variant(sets, variant, path)
        transformer = open_transformer_dir(path, chosen)
        return ModelDir(path, "transformer", transformer, None, provenance, chosen, sets)
    model_index = _read_json(index_path, "model_index")
    entry = model_index.get("transformer")
    if not (isinstance(entry, list) and len(entry) == 2 and entry[1] == TRANSFORMER_CLASS):
        raise ModelDirError(
            f"{path} is a {model_index.get('_class_name', 'pipeline')} whose transformer is not a {TRANSFORMER_CLASS}"
        )
    if not (path / "transformer").is_dir():
        raise ModelDirError(f"{path} has model_index.json but no transformer/ directory")
    sets = {
        name: weight_sets(path / name, WEIGHTS_BASENAME if name == "transformer" else None)
        for name, value in model_index.items()
        if not name.startswith("_") and isinstance(value, list)
    }
    chosen = resolve_variant(sets, variant, path)
    transformer_variant = chosen if chosen in sets["transformer"] else None
    transformer = open_transformer_dir(path / "transformer", transformer_variant)
    return ModelDir(path, "pipeline", transformer, model_index, provenance, chosen, sets)


def as_model_dir(spec: str | os.PathLike | ModelDir, variant: str | None = None) -> ModelDir:
    """An opened :class:`ModelDir` as it is; a path or ``builtin:NAME`` opened with :func:`open_model_dir`."""
    return spec if isinstance(spec, ModelDir) else open_model_dir(spec, variant)


def carry_components(source: ModelDir, out_root: Path, drop: Sequence[str] = ()) -> list[str]:
    """Hard-link (copy where links fail) every pipeline file except the transformer and provenance.

    Returns the component names carried. A 5 GB text encoder costs no disk and no time. Links are
    resolved (the output holds files, never links into the input); ``drop`` leaves components out
    (the caller writes a ``model_index.json`` without them).
    """
    if source.kind != "pipeline":
        return []
    skip = {"transformer", PROVENANCE_NAME, *drop}
    carried = set()
    for file, real in walk_model_files(source.path):
        relative = file.relative_to(source.path)
        top = relative.parts[0]
        if top in skip or (drop and relative == Path("model_index.json")):
            continue
        link_or_copy(real, out_root / relative)
        if len(relative.parts) > 1:
            carried.add(top)
    return sorted(carried)


def write_transformer_dir(
    out_dir: Path,
    config: dict[str, Any],
    entries: Sequence[TensorEntry],
    max_shard_size: int,
    progress: ProgressFn = no_progress,
    variant: str | None = None,
) -> None:
    """Write ``config.json`` and the (sharded) safetensors weights of a transformer into ``out_dir``.

    ``variant`` names the files as diffusers' ``save_pretrained(variant=...)`` does.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = dict(config)
    clean["_class_name"] = TRANSFORMER_CLASS
    if "_diffusers_version" not in clean:  # looking it up imports importlib.metadata: ~15 ms
        clean["_diffusers_version"] = diffusers_version()
    clean.pop("_use_default_values", None)
    clean.pop("_name_or_path", None)
    (out_dir / "config.json").write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    write_sharded(out_dir, entries, max_shard_size, WEIGHTS_BASENAME, progress, variant=variant)


def diffusers_version() -> str:
    """The installed diffusers version, as diffusers records it in the configs it writes."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffusers")
    except PackageNotFoundError:
        return "unknown"


def params_per_block(tdir: TransformerDir) -> int:
    """Parameters of one block (block 0; all SANA blocks are the same shape)."""
    return sum(info.numel for info in tdir.block_tensors().get(0, []))
