"""The files of a model dir as users hold them: the symlink rule, weight sets and variants.

**Symlinks.** A Hugging Face hub-cache snapshot (``models--ORG--NAME/snapshots/<rev>``) is a tree
of relative symlinks into the same repo's ``blobs/``. sanatool follows a symlink only when it
resolves inside the model dir, or inside the ``blobs/`` of the hub-cache repo the model dir belongs
to; any other link, and a link whose target is missing, is refused before anything is read, so a
model dir cannot make sanatool read (or copy into an output) a file from elsewhere.

**Weight sets.** A component folder holds one or more *sets* of safetensors weights: the default
set (``model.safetensors``, or shards with ``model.safetensors.index.json``) and *variants* as
diffusers and transformers name them (``model.bf16.safetensors``, or
``model.bf16-00001-of-00002.safetensors`` with ``model.safetensors.index.bf16.json``). A pipeline's
variant is resolved once for all its components, as ``from_pretrained(variant=...)`` loads them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanatool.errors import ModelDirError
from sanatool.io.jsonl import read_json_object
from sanatool.io.safetensors import read_header

DEFAULT_LABEL = "default"

_SINGLE = re.compile(r"^(?P<base>[^.]+)(?:\.(?P<variant>[^.]+))?\.safetensors$")
_INDEX = re.compile(r"^(?P<base>[^.]+)\.safetensors\.index(?:\.(?P<variant>[^.]+))?\.json$")
_SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$")


def hub_repo_dir(path: Path) -> Path | None:
    """The hub-cache repo (``.../models--ORG--NAME``) whose snapshot holds ``path``, if any."""
    real = path.resolve()
    for folder in (real, *real.parents):
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
            return folder.parent.parent
    return None


def hub_repo_id(path: Path) -> str | None:
    """``ORG/NAME`` of the hub-cache snapshot holding ``path`` (``models--ORG--NAME``), if any."""
    repo = hub_repo_dir(path)
    return repo.name[len("models--") :].replace("--", "/") if repo else None


def allowed_roots(root: Path) -> list[Path]:
    """Where symlinks inside ``root`` may point: ``root`` itself and, inside a hub-cache snapshot, that repo's blobs."""
    repo = hub_repo_dir(root)
    return [root.resolve()] + ([repo / "blobs"] if repo else [])


def _within(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def check_link(path: Path, roots: list[Path]) -> Path:
    """The real path of ``path`` (a file or dir of a model dir), refusing a link that leaves ``roots``
    or whose target is missing."""
    if not path.is_symlink():
        return path.resolve()
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as err:  # a loop of links
        raise ModelDirError(f"{path} is a symlink that cannot be resolved ({err})") from err
    if not real.exists():
        raise ModelDirError(
            f"{path} is a broken symlink: its target {real} is missing (an interrupted download? "
            "download the model again)"
        )
    if not _within(real, roots):
        hub = " or its hub-cache repo's blobs/" if len(roots) > 1 else ""
        raise ModelDirError(
            f"{path} is a symlink to {real}, outside the model dir{hub}; sanatool does not follow such links "
            "(copy the file into the model dir instead)"
        )
    return real


def walk_model_files(root: Path) -> Iterator[tuple[Path, Path]]:
    """Every file under ``root`` as (path under ``root``, real path), applying the symlink rule to
    every file and folder (links to folders are followed when allowed, each real folder once).

    Hidden entries at the top (``.git``, ``.cache`` of ``local_dir`` downloads) are not part of the
    model and are skipped.
    """
    roots = allowed_roots(root)
    seen: set[Path] = set()

    def walk(folder: Path) -> Iterator[tuple[Path, Path]]:
        real = check_link(folder, roots)
        if real in seen:
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            raise ModelDirError(f"cannot read {folder}: {err.strerror or err}") from err
        if folder == root:
            entries = [entry for entry in entries if not entry.name.startswith(".")]
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows a link (its target is checked by the recursion)
            except OSError as err:  # a loop of links
                raise ModelDirError(
                    f"{path} is a symlink that cannot be resolved ({err.strerror or err})"
                ) from err
            if is_dir:
                yield from walk(path)
            else:
                yield path, check_link(path, roots)

    yield from walk(root)


def check_model_files(root: Path) -> None:
    """Refuse a model dir holding a symlink that leaves it (or its hub-cache blobs), or a broken one."""
    for _ in walk_model_files(root):
        pass


@dataclass(frozen=True)
class WeightSet:
    """One set of safetensors weights in a component folder: a single file, or shards with an index."""

    folder: Path
    basename: str
    variant: str | None
    files: tuple[Path, ...]
    index: Path | None
    weight_map: Mapping[str, str] | None

    @property
    def label(self) -> str:
        """The variant's name, or ``default``."""
        return self.variant or DEFAULT_LABEL

    @property
    def nbytes(self) -> int:
        """Bytes on disk (links resolved)."""
        return sum(f.stat().st_size for f in self.files)

    def dtypes(self) -> dict[str, int]:
        """Parameter count per dtype, from the safetensors headers."""
        counts: dict[str, int] = {}
        for file in self.files:
            for info in read_header(file)[0].values():
                counts[info.dtype] = counts.get(info.dtype, 0) + info.numel
        return counts


def _index_set(folder: Path, name: str, base: str, variant: str | None) -> WeightSet:
    index_path = folder / name
    index = read_json_object(index_path, "index", ModelDirError)
    weight_map: Any = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelDirError(f"{index_path} has no weight_map")
    files = []
    for shard in dict.fromkeys(str(v) for v in weight_map.values()):
        if Path(shard).name != shard or shard in ("..", "."):
            raise ModelDirError(
                f"{index_path} names shard {shard!r}, which is outside {folder}; refusing to read it"
            )
        if not (folder / shard).is_file():
            raise ModelDirError(f"{index_path} names shard {shard}, which is missing from {folder}")
        files.append(folder / shard)
    return WeightSet(folder, base, variant, tuple(files), index_path, weight_map)


def weight_sets(folder: Path, basename: str | None = None) -> dict[str | None, WeightSet]:
    """The safetensors weight sets in ``folder``, keyed by variant (``None`` = the default set).

    ``basename`` restricts them to one file name (``diffusion_pytorch_model``); a sharded set's index
    wins over a single file of the same variant, as in diffusers.
    """
    sets: dict[str | None, WeightSet] = {}
    if not folder.is_dir():
        return sets
    names = sorted(p.name for p in folder.iterdir())
    for name in names:
        match = _INDEX.match(name)
        if match and basename in (None, match["base"]):
            variant = match["variant"]
            if variant not in sets:
                sets[variant] = _index_set(folder, name, match["base"], variant)
    for name in names:
        match = _SINGLE.match(name)
        # Shards belong to an index (``model.bf16-00001-of-00002``, legacy ``model-00001-of-00002.bf16``).
        if not match or basename not in (None, match["base"]) or _SHARD_SUFFIX.search(match["base"]):
            continue
        if match["variant"] and _SHARD_SUFFIX.search(match["variant"]):
            continue
        variant = match["variant"]
        if variant not in sets and (folder / name).is_file():
            sets[variant] = WeightSet(folder, match["base"], variant, (folder / name,), None, None)
    return sets


def _labels(variants: Any) -> str:
    """``default, bf16, fp16``: the default set first."""
    return ", ".join(v or DEFAULT_LABEL for v in sorted(variants, key=lambda v: (v is not None, v or "")))


def resolve_variant(
    sets: Mapping[str, Mapping[str | None, WeightSet]], requested: str | None, where: Path
) -> str | None:
    """The variant to load a model with (``None`` = the default files), given each component's weight sets.

    A variant is usable when every component holds it or its default set (``from_pretrained(variant=)``
    falls back to the default per component). Without ``requested``: the default set when every
    component has one, else the only usable variant; several usable variants and no default set, or
    none usable, are refused. A ``requested`` variant that no component holds, or that a component
    holds neither of, is refused.
    """
    holding = {name: component for name, component in sets.items() if component}
    named = sorted({v for component in holding.values() for v in component if v is not None})

    def lacking(variant: str | None) -> list[str]:
        return [
            name for name, component in holding.items() if variant not in component and None not in component
        ]

    if requested is not None:
        if requested not in named:
            available = _labels({v for component in holding.values() for v in component}) or "none"
            raise ModelDirError(
                f"--variant {requested}: {where} has no {requested} weights; it holds: {available}"
            )
        missing = lacking(requested)
        if missing:
            raise ModelDirError(
                f"--variant {requested}: {where}/{missing[0]} holds neither {requested} nor default weights "
                f"(it has: {_labels(holding[missing[0]])})"
            )
        return requested
    if not [name for name, component in holding.items() if None not in component]:
        return None
    usable = [v for v in named if not lacking(v)]
    if len(usable) == 1:
        return usable[0]
    if usable:
        raise ModelDirError(
            f"{where} holds several weight variants ({', '.join(usable)}) and no default set; "
            f"pass --variant NAME to choose one"
        )
    detail = "; ".join(f"{name}: {_labels(component)}" for name, component in holding.items())
    raise ModelDirError(f"{where} has no set of weights that all its components hold ({detail})")
