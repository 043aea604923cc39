"""Checking a pipeline's other components (VAE, text encoder, tokenizer) before anything is built.

The transformer is validated from its config and safetensors headers when its dir is opened
(:mod:`sanatool.io.modeldir`); the components get the same treatment here before diffusers or
transformers load them, so that a hostile or broken config is one clear line instead of a
terabyte allocation or a crash deep in a library:

* structural counts are bounded first (:data:`MAX_LIST_ENTRIES`, :data:`MAX_LAYERS`), so that
  building the model's skeleton stays quick;
* the model is built from its config on the *meta* device (shapes only, no memory), and every
  parameter must be in the weights with the same shape. The headers are bounded by the file's
  size (:func:`sanatool.io.safetensors.read_header`), so what loading allocates is bounded by the
  files on disk;
* weights must be safetensors. Pickle files (``.bin``, ``.pt``, ``.ckpt`` …) can run code when
  unpickled: they are refused unless ``allow_pickle``, and then read only by torch's
  ``weights_only`` loader (diffusers and transformers load them the same way).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from sanatool.errors import ModelDirError
from sanatool.io.modeldir import ModelDir
from sanatool.io.safetensors import read_header

#: Components whose weights and config are checked (the transformer is checked when its dir opens).
CHECKED = ("vae", "text_encoder")
#: Suffixes of pickle weight files (torch.save, the old diffusers/transformers formats).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: Files any of which makes a usable tokenizer dir.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
#: Longest list a component config may hold (stages, per-stage settings, layer types). Real SANA
#: components have 6 VAE stages and a 26-layer Gemma-2.
MAX_LIST_ENTRIES = 256
#: Largest layer count a component config may ask for, per entry (``num_hidden_layers``,
#: ``layers_per_block`` …).
MAX_LAYERS = 256
_LIBRARIES = ("diffusers", "transformers")


def _bound_structure(value: Any, where: str, key: str = "") -> None:
    if isinstance(value, dict):
        for name, item in value.items():
            _bound_structure(item, where, str(name))
    elif isinstance(value, list):
        if len(value) > MAX_LIST_ENTRIES:
            raise ModelDirError(
                f"{where}: {key} has {len(value)} entries (at most {MAX_LIST_ENTRIES}); is it corrupt?"
            )
        for item in value:
            _bound_structure(item, where, key)
    elif "layers" in key and isinstance(value, int) and not isinstance(value, bool) and value > MAX_LAYERS:
        raise ModelDirError(f"{where}: {key} is {value} (at most {MAX_LAYERS}); is it corrupt?")


def _weight_shapes(directory: Path, allow_pickle: bool) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a component's weights (safetensors headers; pickle only if allowed)."""
    safetensors = sorted(directory.glob("*.safetensors"))
    if safetensors:
        shapes: dict[str, tuple[int, ...]] = {}
        for file in safetensors:
            shapes.update({name: info.shape for name, info in read_header(file)[0].items()})
        return shapes
    pickles = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if not pickles:
        raise ModelDirError(f"{directory} has no weights (no .safetensors file)")
    if not allow_pickle:
        raise ModelDirError(
            f"{directory} holds pickle weights ({pickles[0].name}), which can run code when loaded; convert "
            "them to safetensors (save_pretrained), or pass --allow-pickle to read them with torch's weights_only loader"
        )
    import pickle

    import torch

    shapes = {}
    for file in pickles:
        try:
            state = torch.load(file, map_location="meta", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, AttributeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelDirError(f"{file} is refused by torch's weights_only loader ({first})") from err
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelDirError(f"{file} is not a state dict of tensors")
        shapes.update({str(name): tuple(tensor.shape) for name, tensor in state.items()})
    return shapes


def _skeleton(model: ModelDir, name: str) -> Any:
    """The component built from its config on the meta device (no memory, no weights)."""
    import torch

    library, class_name = model.components[name]
    cls = getattr(importlib.import_module(library), class_name, None) if library in _LIBRARIES else None
    if cls is None:
        raise ModelDirError(
            f"{model.path}: model_index.json names {name} class {library}.{class_name}, which sanatool cannot check"
        )
    directory = model.path / name
    try:
        with torch.device("meta"):
            if library == "diffusers":
                return cls.from_config(model.component_config(name))
            from transformers import AutoConfig

            return cls._from_config(AutoConfig.from_pretrained(directory, local_files_only=True))
    except ModelDirError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to build from this config is the config's fault
        raise ModelDirError(
            f"{directory}/config.json does not build a {class_name} ({type(err).__name__}: {err})"
        ) from err


def _check_component(model: ModelDir, name: str, allow_pickle: bool) -> None:
    directory = model.path / name
    if not directory.is_dir():
        raise ModelDirError(f"{model.path} lists {name} in model_index.json but has no {name}/ directory")
    config_path = directory / "config.json"
    _bound_structure(model.component_config(name), str(config_path))
    shapes = _weight_shapes(directory, allow_pickle)
    skeleton = _skeleton(model, name)
    prefix = f"{getattr(skeleton, 'base_model_prefix', '')}."
    if prefix != "." and shapes and all(key.startswith(prefix) for key in shapes):
        shapes = {key[len(prefix) :]: shape for key, shape in shapes.items()}
    for param_name, param in skeleton.named_parameters():
        shape = shapes.get(param_name)
        if shape is None:
            raise ModelDirError(
                f"{directory}: the weights lack {param_name}, which {config_path.name} implies; "
                "the config and weights do not belong together"
            )
        if shape != tuple(param.shape):
            raise ModelDirError(
                f"{directory}: {param_name} has shape {list(shape)} but {config_path.name} implies "
                f"{list(param.shape)}; the config and weights do not belong together"
            )


def check_components(model: ModelDir, allow_pickle: bool = False) -> None:
    """Validate a pipeline dir's VAE and text encoder (config, weights, shapes) and its tokenizer's
    files before anything is loaded; raise :class:`ModelDirError` naming the first problem.

    Call it after ``model.require_pipeline``; ``allow_pickle`` lets pickle weights through (read
    by torch's ``weights_only`` loader, never executed).
    """
    for name in CHECKED:
        _check_component(model, name, allow_pickle)
    tokenizer = model.path / "tokenizer"
    if not any((tokenizer / file).is_file() for file in TOKENIZER_FILES):
        raise ModelDirError(f"{tokenizer} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
