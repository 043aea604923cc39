"""Model dirs in the diffusers layout: open, validate, fingerprint, write, and record provenance.

A *model dir* is either a pipeline dir (``model_index.json`` + ``transformer/`` + other
components) or a bare transformer dir (``config.json`` + ``diffusion_pytorch_model*.safetensors``,
sharded with an index when large). Opening one reads only JSON and safetensors headers, so it
is fast and never allocates tensors; everything a config or index claims is checked against the
weights before anything large happens. This module never imports torch at import time.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanatool import __version__
from sanatool.errors import InputError, ModelDirError
from sanatool.progress import ProgressFn, no_progress
from sanatool.safetensors_io import TensorEntry, TensorInfo, read_header, write_sharded

TRANSFORMER_CLASS = "SanaTransformer2DModel"
WEIGHTS_BASENAME = "diffusion_pytorch_model"
INDEX_NAME = f"{WEIGHTS_BASENAME}.safetensors.index.json"
PROVENANCE_NAME = "sanatool.json"
BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = {"tiny-shapes": "tiny-shapes"}
DEFAULT_MAX_SHARD_SIZE = "5GB"

_BLOCK_RE = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")

# Bounds that no real SANA config comes near; anything beyond is a broken or hostile file.
_LIMITS = {
    "num_layers": 1024,
    "num_attention_heads": 4096,
    "attention_head_dim": 4096,
    "num_cross_attention_heads": 4096,
    "cross_attention_head_dim": 4096,
    "cross_attention_dim": 65536,
    "caption_channels": 65536,
    "in_channels": 4096,
    "out_channels": 4096,
    "patch_size": 64,
    "sample_size": 65536,
}
_MAX_PARAMS = 10**12


def block_index(name: str) -> int | None:
    """The block number of a ``transformer_blocks.N.…`` tensor name, else ``None``."""
    match = _BLOCK_RE.match(name)
    return int(match.group(1)) if match else None


def block_suffix(name: str) -> str | None:
    """The part after ``transformer_blocks.N.``, else ``None``."""
    match = _BLOCK_RE.match(name)
    return match.group(2) if match else None


def builtin_root() -> Path:
    """Where the package's built-in models live."""
    return Path(__file__).parent / "data"


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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ModelDirError(f"cannot read {what} {path}: {err.strerror or err}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelDirError(f"{what} {path} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ModelDirError(f"{what} {path} is not a JSON object")
    return data


def inner_dim(config: dict[str, Any]) -> int:
    """The transformer's hidden size: attention heads × head dim."""
    return int(config["num_attention_heads"]) * int(config["attention_head_dim"])


def validate_config(config: dict[str, Any], where: Path) -> None:
    """Refuse a config of another class, with missing or non-integer sizes, or absurd sizes.

    Runs before any weight is read, so a hostile config cannot make us allocate.
    """
    cls = config.get("_class_name")
    if cls != TRANSFORMER_CLASS:
        raise ModelDirError(
            f"{where} holds a {cls or 'config without _class_name'}, not a {TRANSFORMER_CLASS}"
        )
    for key, limit in _LIMITS.items():
        value = config.get(key)
        if value is None and key in (
            "out_channels",
            "num_cross_attention_heads",
            "cross_attention_head_dim",
            "cross_attention_dim",
            "sample_size",
        ):
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise ModelDirError(f"{where}: config field {key} must be an integer, got {value!r}")
        if not 1 <= value <= limit:
            raise ModelDirError(
                f"{where}: config field {key}={value} is outside the sane range 1..{limit}; the config is corrupt"
            )
    ratio = config.get("mlp_ratio", 2.5)
    if not isinstance(ratio, int | float) or not 0 < ratio <= 64:
        raise ModelDirError(f"{where}: config field mlp_ratio={ratio!r} is outside the sane range (0, 64]")
    dim = inner_dim(config)
    per_block = (
        4 * dim * dim + 4 * dim * int(config.get("cross_attention_dim") or dim) + 3 * ratio * dim * dim
    )
    if per_block * config["num_layers"] > _MAX_PARAMS:
        raise ModelDirError(
            f"{where}: config implies more than {_MAX_PARAMS:.0e} parameters; the config is corrupt"
        )


def expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes that the config implies for key tensors (block tensors use block 0's names)."""
    dim = inner_dim(config)
    patch = int(config.get("patch_size", 1))
    out_channels = int(config.get("out_channels") or config["in_channels"])
    cross_heads = int(config.get("num_cross_attention_heads") or config["num_attention_heads"])
    cross_dim_head = int(config.get("cross_attention_head_dim") or config["attention_head_dim"])
    cross_dim = int(config.get("cross_attention_dim") or dim)
    hidden = int(float(config.get("mlp_ratio", 2.5)) * dim)
    return {
        "patch_embed.proj.weight": (dim, int(config["in_channels"]), patch, patch),
        "caption_projection.linear_1.weight": (dim, int(config["caption_channels"])),
        "proj_out.weight": (patch * patch * out_channels, dim),
        "transformer_blocks.0.attn1.to_q.weight": (dim, dim),
        "transformer_blocks.0.attn2.to_k.weight": (cross_heads * cross_dim_head, cross_dim),
        "transformer_blocks.0.ff.conv_inverted.weight": (hidden * 2, dim, 1, 1),
        "transformer_blocks.0.ff.conv_point.weight": (dim, hidden, 1, 1),
    }


@dataclass
class TransformerDir:
    """A validated ``SanaTransformer2DModel`` directory: config plus tensor locations (no data loaded)."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    shard_files: list[Path]
    index_file: Path | None

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
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    digest.update(json.dumps(clean, sort_keys=True).encode())
    for info in sorted(tensors, key=lambda t: t.name):
        digest.update(f"\n{info.name}|{info.dtype}|{list(info.shape)}".encode())
    return digest.hexdigest()[:16]


def _inside(path: Path, root: Path) -> bool:
    return root.resolve() in path.resolve().parents


def open_transformer_dir(path: Path) -> TransformerDir:
    """Open and validate a bare transformer dir (config, index, shards, shapes)."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelDirError(f"{path} is not a model dir: it has no config.json (nor model_index.json)")
    config = _read_json(config_path, "config")
    validate_config(config, config_path)
    index_path = path / INDEX_NAME
    single = path / f"{WEIGHTS_BASENAME}.safetensors"
    if index_path.is_file():
        index = _read_json(index_path, "index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelDirError(f"{index_path} has no weight_map")
        shard_names = list(dict.fromkeys(weight_map.values()))
        shard_files = []
        for name in shard_names:
            shard = path / str(name)
            if not _inside(shard, path) or Path(str(name)).name != str(name):
                raise ModelDirError(
                    f"{index_path} names shard {name!r}, which is outside {path}; refusing to read it"
                )
            if not shard.is_file():
                raise ModelDirError(f"{index_path} names shard {name}, which is missing from {path}")
            shard_files.append(shard)
    elif single.is_file():
        weight_map = None
        shard_files = [single]
    else:
        if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
            raise ModelDirError(
                f"{path} holds pickle weights only; sanatool reads safetensors (convert with diffusers' save_pretrained)"
            )
        raise ModelDirError(
            f"{path} has a config.json but no {WEIGHTS_BASENAME}.safetensors (or sharded index)"
        )
    tensors: dict[str, TensorInfo] = {}
    for shard in shard_files:
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
    tdir = TransformerDir(path, config, tensors, shard_files, index_path if weight_map is not None else None)
    _check_shapes(tdir)
    return tdir


def _check_shapes(tdir: TransformerDir) -> None:
    blocks = set(tdir.block_tensors())
    if blocks != set(range(tdir.num_layers)):
        raise ModelDirError(
            f"{tdir.path}: config says num_layers={tdir.num_layers} but the weights hold blocks "
            f"{_ranges(sorted(blocks)) or 'none'}; the config does not match the weights"
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
    has_norm = "transformer_blocks.0.attn1.norm_q.weight" in tdir.tensors
    if has_norm != bool(tdir.qk_norm):
        state = "has" if has_norm else "lacks"
        raise ModelDirError(f"{tdir.path}: the weights {state} QK-norm but config qk_norm={tdir.qk_norm!r}")


def _ranges(values: list[int]) -> str:
    parts: list[str] = []
    for value in values:
        if parts and value == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{value}"
        else:
            parts.append(str(value))
    return ",".join(parts)


@dataclass
class ModelDir:
    """An opened model dir: a pipeline or a bare transformer, plus its provenance."""

    path: Path
    kind: str  # "pipeline" or "transformer"
    transformer: TransformerDir
    model_index: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

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

    def transformer_out(self, out_root: Path) -> Path:
        """Where this model's transformer goes inside an output of the same layout."""
        return out_root / "transformer" if self.kind == "pipeline" else out_root


def open_model_dir(spec: str | os.PathLike) -> ModelDir:
    """Open a pipeline or bare transformer dir (or ``builtin:NAME``), validating it fully.

    Reads only JSON and safetensors headers: fast on a 10 GB checkpoint, no tensor allocated.
    """
    path = resolve_model_path(spec)
    if not path.exists():
        raise ModelDirError(f"model dir {spec} does not exist")
    if not path.is_dir():
        raise ModelDirError(f"{spec} is a file, not a model dir (expected a diffusers directory)")
    provenance: dict[str, Any] = {}
    if (path / PROVENANCE_NAME).is_file():
        provenance = _read_json(path / PROVENANCE_NAME, "provenance file")
    index_path = path / "model_index.json"
    if index_path.is_file():
        model_index = _read_json(index_path, "model_index")
        entry = model_index.get("transformer")
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1] == TRANSFORMER_CLASS):
            raise ModelDirError(
                f"{path} is a {model_index.get('_class_name', 'pipeline')} whose transformer is not a {TRANSFORMER_CLASS}"
            )
        if not (path / "transformer").is_dir():
            raise ModelDirError(f"{path} has model_index.json but no transformer/ directory")
        return ModelDir(path, "pipeline", open_transformer_dir(path / "transformer"), model_index, provenance)
    return ModelDir(path, "transformer", open_transformer_dir(path), None, provenance)


def carry_components(source: ModelDir, out_root: Path) -> list[str]:
    """Hard-link (copy where links fail) every pipeline file except the transformer and provenance.

    Returns the component names carried. A 5 GB text encoder costs no disk and no time.
    """
    if source.kind != "pipeline":
        return []
    carried = []
    for entry in sorted(source.path.iterdir()):
        if entry.name in ("transformer", PROVENANCE_NAME) or entry.name.startswith("."):
            continue
        target = out_root / entry.name
        if entry.is_dir():
            for file in sorted(entry.rglob("*")):
                if file.is_dir():
                    continue
                dest = target / file.relative_to(entry)
                dest.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(file, dest)
            carried.append(entry.name)
        else:
            _link_or_copy(entry, target)
    return carried


def _link_or_copy(src: Path, dst: Path) -> None:
    real = src.resolve()  # Hugging Face cache snapshots are symlinks into blobs/.
    try:
        os.link(real, dst)
    except OSError:
        shutil.copy2(real, dst)


def write_transformer_dir(
    out_dir: Path,
    config: dict[str, Any],
    entries: Sequence[TensorEntry],
    max_shard_size: int,
    progress: ProgressFn = no_progress,
) -> None:
    """Write ``config.json`` and the (sharded) safetensors weights of a transformer into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = dict(config)
    clean["_class_name"] = TRANSFORMER_CLASS
    if "_diffusers_version" not in clean:  # looking it up imports importlib.metadata: ~15 ms
        clean["_diffusers_version"] = _diffusers_version()
    clean.pop("_use_default_values", None)
    clean.pop("_name_or_path", None)
    (out_dir / "config.json").write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    write_sharded(out_dir, entries, max_shard_size, WEIGHTS_BASENAME, progress)


def _diffusers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffusers")
    except PackageNotFoundError:
        return "unknown"


def chain_summary(provenance: dict[str, Any], fallback_origin: str = "") -> str:
    """One line for a model's history, e.g. ``sana1.5-1.6b → grow(24, partial) → prune(keep 20)``."""
    parts = [str(provenance.get("origin") or fallback_origin or "unknown")]
    parts += [
        str(step.get("summary", step.get("command", "?")))
        for step in provenance.get("chain", [])
        if step.get("command") != "init"
    ]
    return " → ".join(parts)


def write_provenance(
    out_root: Path,
    parent: ModelDir | None,
    command: str,
    args: dict[str, Any],
    summary: str,
    fingerprint: str,
    origin: str | None = None,
) -> dict[str, Any]:
    """Write ``sanatool.json`` into an output: the parent's chain plus this step, and a model card."""
    previous = parent.provenance if parent else {}
    chain = list(previous.get("chain", []))
    chain.append(
        {
            "command": command,
            "args": args,
            "summary": summary,
            "parent_fingerprint": parent.fingerprint() if parent else None,
            "fingerprint": fingerprint,
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "sanatool_version": __version__,
        }
    )
    record = {
        "format": "sanatool-provenance/1",
        "origin": previous.get("origin") or origin or (parent.path.name if parent else command),
        "chain": chain,
    }
    record["model_card"] = f"A {TRANSFORMER_CLASS} made with sanatool: {chain_summary(record)}."
    (out_root / PROVENANCE_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return record


def params_per_block(tdir: TransformerDir) -> int:
    """Parameters of one block (block 0; all SANA blocks are the same shape)."""
    return sum(info.numel for info in tdir.block_tensors().get(0, []))


def human_count(value: float) -> str:
    """1234567 → ``1.23M``."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"


def human_bytes(value: float) -> str:
    """Bytes in decimal units, as file managers and HF show them."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"
