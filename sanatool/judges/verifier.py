"""The learned shapes verifier: a small image–text model that answers "does this image match the caption?".

It is the shapes world's analog of SANA 1.5's NVILA verifier: a judge trained by sanatool
(:mod:`sanatool.judges.verifier_train`) that is *not* the evaluation metric. A verifier dir holds
``verifier.json`` (format, architecture, vocabulary, object classes, the yes-threshold calibrated
on validation images, training summary) and ``model.safetensors``. One verifier ships inside the
package (:func:`shipped_verifier_path`), trained on the shipped model's own candidates:
``--judge verifier`` with no path uses it.

Architecture (about 0.27M parameters), built so it learns in minutes on a CPU:

- **Image**: a small conv net (``stem_layers`` 3×3 convs at full resolution, then patches)
  gives an 8×8 grid of features, and two per-cell heads read it:
  which object class (shape × colour, or background) covers the cell, and which class has
  its *centre* there. Training supervises both densely on renders, so the sum of a class's
  centre probabilities counts its objects and their mean cell locates them.
- **Text**: word embeddings, a width-3 convolution (binds "red" to "square"), and a small
  transformer; each word then *refers* to a distribution over the object classes (supervised
  in training from the caption's spec: an object's colour and shape words refer to its class,
  other words to none).
- **Grounding**: per word, the referred class's coverage, count and centroid in the image,
  plus the centroids of the nearest words before and after it (what a relation word
  compares) and their counts (what a number word compares).
- **Verdict**: a small transformer over the grounded words; a ``[CLS]`` logit plus a soft
  minimum of per-word verdicts (a caption holds only if every part of it does).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sanatool.errors import ModelDirError
from sanatool.io.jsonl import read_json_object
from sanatool.judges.base import Judge, Judgement

FORMAT = "sanatool-verifier"
FORMAT_VERSION = 1
CONFIG_NAME = "verifier.json"
WEIGHTS_NAME = "model.safetensors"
PAD, UNK = "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD, UNK)
BACKGROUND = "background"
#: Architecture defaults.
DEFAULT_ARCHITECTURE: dict[str, int] = {
    "image_size": 32,
    "patch_size": 4,
    "stem_channels": 24,
    "width": 64,
    "text_layers": 2,
    "fuse_layers": 2,
    "heads": 4,
    "mlp_ratio": 2,
    "max_words": 32,
    "stem_layers": 1,
}
#: Keys added after the first verifiers shipped, with the value that reproduces those verifiers.
_LEGACY_DEFAULTS = {"stem_layers": 1}
# Bounds far beyond any sane verifier: a config beyond them is broken, and is refused before allocating.
_BOUNDS = {
    "image_size": (8, 1024),
    "patch_size": (1, 64),
    "stem_channels": (1, 1024),
    "width": (8, 4096),
    "text_layers": (1, 64),
    "fuse_layers": (1, 64),
    "heads": (1, 64),
    "mlp_ratio": (1, 16),
    "max_words": (4, 1024),
    "stem_layers": (1, 16),
}
_MAX_COUNT = 5  # count features cover 0 … 5 objects of a class
#: The verifier shipped in the package (``sanatool/data/verifier-shapes``), for ``--judge verifier``.
SHIPPED_DIR = "verifier-shapes"


def shipped_verifier_path() -> Path:
    """The dir of the verifier that ships with sanatool (trained on ``builtin:tiny-shapes`` candidates)."""
    return Path(__file__).resolve().parent.parent / "data" / SHIPPED_DIR


def default_vocabulary() -> list[str]:
    """Special tokens, then every token of the shapes caption grammar."""
    from sanatool.shapes import vocabulary

    return [*SPECIAL_TOKENS, *vocabulary()]


def object_classes() -> list[str]:
    """The per-cell classes: ``background``, then every ``"<colour> <shape>"``."""
    from sanatool.shapes import COLORS, SHAPES

    return [BACKGROUND, *(f"{color} {shape}" for shape in SHAPES for color in COLORS)]


def validate_architecture(arch: Any, where: str) -> dict[str, int]:
    """Check an architecture dict (known keys, integers within bounds, consistent sizes).

    Keys added since the first verifier format (``stem_layers``) may be missing: an older file
    gets the value its model was built with.
    """
    if isinstance(arch, dict):
        arch = {**{k: v for k, v in _LEGACY_DEFAULTS.items() if k not in arch}, **arch}
    if not isinstance(arch, dict) or set(arch) != set(DEFAULT_ARCHITECTURE):
        raise ModelDirError(
            f"{where}: 'architecture' must have exactly the keys {sorted(DEFAULT_ARCHITECTURE)}; "
            "was it written by `sanatool train-verifier`?"
        )
    for key, (low, high) in _BOUNDS.items():
        value = arch[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ModelDirError(
                f"{where}: architecture.{key} must be an integer in [{low}, {high}], got {value!r}"
            )
    if arch["image_size"] % arch["patch_size"]:
        raise ModelDirError(f"{where}: image_size must be a multiple of patch_size")
    if arch["width"] % arch["heads"]:
        raise ModelDirError(f"{where}: width must be a multiple of heads")
    return dict(arch)


def build_model(architecture: dict[str, int], vocab_size: int, num_classes: int) -> Any:
    """Instantiate the verifier ``nn.Module`` for an architecture, vocabulary size and class count."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def encoder(width: int, layers: int, arch: dict[str, int]) -> nn.Module:
        layer = nn.TransformerEncoderLayer(
            width, arch["heads"], arch["mlp_ratio"] * width, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )  # fmt: skip
        return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    class ShapesVerifier(nn.Module):
        """``encode_image`` → per-cell class maps; ``score(maps, word_ids)`` → one yes-logit per pair."""

        def __init__(self, arch: dict[str, int], vocab: int, classes: int) -> None:
            super().__init__()
            width, stem, patch = arch["width"], arch["stem_channels"], arch["patch_size"]
            grid = arch["image_size"] // patch
            # Full-resolution 3×3 convs (``stem_layers``) see the pixel detail that tells a circle
            # from a square and a small stray blob from none, before the patches pool it.
            full_res: list[nn.Module] = [nn.Conv2d(3, stem, 3, padding=1), nn.GELU()]
            for _ in range(arch["stem_layers"] - 1):
                full_res += [nn.Conv2d(stem, stem, 3, padding=1), nn.GELU()]
            self.stem = nn.Sequential(
                *full_res,
                nn.Conv2d(stem, width, patch, stride=patch),
                nn.GELU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(width, width, 3, padding=1),
            )
            centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 - 1
            rows, cols = torch.meshgrid(centres, centres, indexing="ij")
            # Cell centres in [-1, 1] (x right, y down), in the grid's row-major order.
            self.register_buffer("xy", torch.stack([cols.flatten(), rows.flatten()], -1), persistent=False)
            self.register_buffer(
                "counts", torch.arange(_MAX_COUNT + 1, dtype=torch.float32), persistent=False
            )
            self.cover_head = nn.Linear(width, classes)
            self.centre_head = nn.Linear(width, classes)
            self.words = nn.Embedding(vocab, width, padding_idx=0)
            self.word_pos = nn.Parameter(torch.randn(1, arch["max_words"], width) * 0.1)
            self.ngram = nn.Conv1d(width, width, 3, padding=1)
            self.text = encoder(width, arch["text_layers"], arch)
            self.refer = nn.Linear(width, classes)
            self.gate = nn.Linear(width, 1)
            grounded = width + classes + 6 + 3 * (_MAX_COUNT + 1) + 2
            self.project = nn.Linear(grounded, width)
            self.fuse = encoder(width, arch["fuse_layers"], arch)
            self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.1)
            self.norm = nn.LayerNorm(width)
            self.head = nn.Linear(width, 1)
            self.word_head = nn.Linear(width, 1)
            self.temperature = nn.Parameter(torch.tensor(1.0))

        def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Per-cell class logits (B × cells × classes): what covers each cell, whose centre is there."""
            features = self.stem(pixels * 2.0 - 1.0).flatten(2).transpose(1, 2)
            return self.cover_head(features), self.centre_head(features)

        def read_words(self, word_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Per-word features (B × L × width) and the logits of the object class each word refers to."""
            embedded = self.words(word_ids)
            embedded = embedded + self.ngram(embedded.transpose(1, 2)).transpose(1, 2)
            words = self.text(
                embedded + self.word_pos[:, : word_ids.shape[1]], src_key_padding_mask=word_ids == 0
            )
            return words, self.refer(words)

        def score(
            self,
            maps: tuple[torch.Tensor, torch.Tensor],
            word_ids: torch.Tensor,
            read: tuple[torch.Tensor, torch.Tensor] | None = None,
        ) -> torch.Tensor:
            """Yes-logits for captions ``word_ids`` (B × L, 0 = padding) against the images' ``maps``.

            ``read``: :meth:`read_words` of ``word_ids`` when the caller already has it (training
            supervises the referred classes too, and reads each caption once).
            """
            cover, centre = maps[0].softmax(-1), maps[1].softmax(-1)
            batch, length = word_ids.shape
            pad = word_ids == 0
            words, refer_logits = read if read is not None else self.read_words(word_ids)
            refer = refer_logits.softmax(-1)
            objects = torch.cat(
                [torch.zeros_like(refer[..., :1]), refer[..., 1:]], -1
            )  # background refers to nothing
            covered = objects @ cover.transpose(1, 2)  # B × L × cells
            centred = objects @ centre.transpose(1, 2)
            count = centred.sum(-1, keepdim=True)
            where = (centred @ self.xy) / (count + 1e-3)
            count_code = torch.exp(-((count - self.counts) ** 2) / 0.3)
            # The nearest object words before and after each word (weights halve with each step away).
            positions = torch.arange(length, device=word_ids.device)
            offset = (positions[None, :] - positions[:, None]).float()
            before = torch.where(offset < 0, 0.5 ** (-offset - 1), torch.zeros_like(offset))
            after = torch.where(offset > 0, 0.5 ** (offset - 1), torch.zeros_like(offset))
            gate = torch.sigmoid(self.gate(words)).squeeze(-1).masked_fill(pad, 0.0) * (1 - refer[..., 0])

            def nearby(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
                w = weights[None] * gate[:, None, :]
                return (w @ values) / (w.sum(-1, keepdim=True) + 1e-3)

            grounded = torch.cat(
                [
                    words,
                    refer,
                    count,
                    torch.log(count + 0.1),
                    where,
                    covered.amax(-1, keepdim=True),
                    covered.sum(-1, keepdim=True) / 8,
                    count_code,
                    nearby(before, count_code),
                    nearby(after, count_code),
                    nearby(before, where) - nearby(after, where),
                ],
                -1,
            )
            tokens = torch.cat([self.cls.expand(batch, -1, -1), words + self.project(grounded)], 1)
            mask = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=pad.device), pad], 1)
            out = self.norm(self.fuse(tokens, src_key_padding_mask=mask))
            verdicts = self.word_head(out[:, 1:]).squeeze(-1).masked_fill(pad, 30.0)
            temperature = F.softplus(self.temperature) + 0.1
            softmin = -temperature * torch.logsumexp(-verdicts / temperature, dim=1)
            return self.head(out[:, 0]).squeeze(-1) + softmin

        def forward(self, pixels: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
            return self.score(self.encode_image(pixels), word_ids)

    return ShapesVerifier(architecture, vocab_size, num_classes)


def image_array(image: Any, size: int) -> Any:
    """A PIL image as a ``size`` × ``size`` × 3 uint8 array (RGB, bilinear resize when needed)."""
    import numpy as np
    from PIL import Image

    rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


class VerifierCodec:
    """Turns images and captions into the verifier's tensors (resize, scale, tokenise, pad)."""

    def __init__(self, vocabulary: Sequence[str], image_size: int, max_words: int) -> None:
        self.vocabulary = list(vocabulary)
        self.index = {word: i for i, word in enumerate(self.vocabulary)}
        self.image_size = image_size
        self.max_words = max_words

    def encode_words(self, captions: Sequence[str]) -> Any:
        """Word ids (B × L, padded with 0); unknown words map to ``<unk>``; long captions keep their start."""
        import torch

        from sanatool.shapes import tokens

        unk = self.index[UNK]
        rows = [[self.index.get(w, unk) for w in tokens(c.lower())][: self.max_words] for c in captions]
        length = max(1, max(len(r) for r in rows))
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids

    @staticmethod
    def pixels(arrays: Any) -> Any:
        """B × S × S × 3 uint8 arrays → B × 3 × S × S floats in [0, 1]."""
        import numpy as np
        import torch

        return torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2).float() / 255.0

    def encode_images(self, images: Sequence[Any]) -> Any:
        """Pixels (B × 3 × S × S, floats in [0, 1]) from PIL images, resized to the verifier's size."""
        import numpy as np

        return self.pixels(np.stack([image_array(image, self.image_size) for image in images]))


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_NAME
    if not path.is_dir() or not file.is_file():
        raise ModelDirError(
            f"{path} is not a verifier dir: it has no {CONFIG_NAME} (train one with `sanatool train-verifier`)"
        )
    config = read_json_object(file, "verifier config", ModelDirError)
    if config.get("format") != FORMAT:
        raise ModelDirError(f"{file} is not a sanatool verifier config (its 'format' is not {FORMAT!r})")
    if config.get("version") != FORMAT_VERSION:
        raise ModelDirError(
            f"{file} has format version {config.get('version')!r}; this sanatool reads version {FORMAT_VERSION}"
        )
    config["architecture"] = validate_architecture(config.get("architecture"), str(file))
    vocab = config.get("vocabulary")
    if (
        not isinstance(vocab, list)
        or not all(isinstance(w, str) for w in vocab)
        or list(vocab[: len(SPECIAL_TOKENS)]) != list(SPECIAL_TOKENS)
        or len(set(vocab)) != len(vocab)
        or len(vocab) > 100_000
    ):
        raise ModelDirError(
            f"{file}: 'vocabulary' must be a list of distinct words starting with {SPECIAL_TOKENS}"
        )
    classes = config.get("classes")
    if (
        not isinstance(classes, list)
        or not classes
        or classes[0] != BACKGROUND
        or not all(isinstance(c, str) for c in classes)
        or len(classes) > 10_000
    ):
        raise ModelDirError(f"{file}: 'classes' must be a list of class names starting with {BACKGROUND!r}")
    threshold = config.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise ModelDirError(f"{file}: 'threshold' must be a number in (0, 1), got {threshold!r}")
    if not (path / WEIGHTS_NAME).is_file():
        raise ModelDirError(f"{path} has no {WEIGHTS_NAME}; the verifier's weights are missing")
    return config


def check_verifier_dir(path: str | os.PathLike) -> dict[str, Any]:
    """Validate a verifier dir from its config alone (no torch); return the config."""
    return _read_config(Path(path))


def save_verifier(model: Any, config: dict[str, Any], out_dir: str | os.PathLike) -> None:
    """Write ``verifier.json`` and ``model.safetensors`` into an existing dir."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": FORMAT})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def load_verifier(path: str | os.PathLike, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load a verifier dir; returns ``(model in eval mode, config)``. Safetensors only."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(path)
    config = _read_config(root)
    model = build_model(config["architecture"], len(config["vocabulary"]), len(config["classes"]))
    try:
        state = load_file(str(root / WEIGHTS_NAME))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise ModelDirError(
            f"the weights in {root / WEIGHTS_NAME} do not match {CONFIG_NAME}: {err}"
        ) from err
    return model.to(device).eval(), config


def verifier_probabilities(
    model: Any, codec: VerifierCodec, images: Sequence[Any], captions: Sequence[str]
) -> Any:
    """P(yes) for each (image, caption) pair, as a 1-D float tensor on the CPU."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(codec.encode_images(images).to(device), codec.encode_words(captions).to(device))
    return torch.sigmoid(logits.float()).cpu()


class VerifierJudge(Judge):
    """Judge with a trained shapes verifier: ``p_yes`` = score = P(yes); yes when P(yes) > its threshold.

    The threshold is the one ``verifier.json`` records (calibrated on validation images at
    training time; 0.5 when absent).
    """

    kind = "verifier"

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        super().__init__()
        self.path = Path(path)
        self.model, self.config = load_verifier(self.path, device)
        arch = self.config["architecture"]
        self.codec = VerifierCodec(self.config["vocabulary"], arch["image_size"], arch["max_words"])
        self.threshold = float(self.config.get("threshold", 0.5))

    def describe(self) -> dict[str, Any]:
        """The judge's kind, label, path and its recorded held-out agreement with the evaluator."""
        info = {**super().describe(), "path": str(self.path), "threshold": self.threshold}
        generated = self.config.get("training", {}).get("heldout", {}).get("generated")
        if generated:
            info["heldout_agreement"] = generated["agreement"]
            info["heldout_balanced_accuracy"] = generated["balanced_accuracy"]
        return info

    def _judge(
        self, images: Sequence[Any], prompts: Sequence[str], specs: Sequence[dict[str, Any] | None]
    ) -> list[Judgement]:
        probs = verifier_probabilities(self.model, self.codec, images, prompts).tolist()
        return [Judgement(score=p, answer=p > self.threshold, p_yes=p, p_no=1.0 - p) for p in probs]
