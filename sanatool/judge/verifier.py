"""The learned shapes verifier: a small image–text model that answers "does this image match the caption?".

It is the shapes world's analog of SANA 1.5's NVILA verifier: a judge trained by sanatool
(:mod:`sanatool.judge.verifier_train`) that is *not* the evaluation metric. A verifier dir holds
``verifier.json`` (format, architecture, vocabulary, training summary) and ``model.safetensors``.

Architecture (a miniature ViLT): a two-layer conv stem turns the image into an 8×8 grid of
patch tokens with learned 2-D positions; caption words (the shapes grammar's tokens) get
embeddings and positions; a ``[CLS]`` token, the words and the patches go through a small
pre-norm transformer encoder, and the ``[CLS]`` output gives one yes-logit. Attention between
words and patches is what lets it check colour binding, counts and left/right/above/below.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sanatool.errors import ModelDirError
from sanatool.judge.base import Judge, Judgement

FORMAT = "sanatool-verifier"
FORMAT_VERSION = 1
CONFIG_NAME = "verifier.json"
WEIGHTS_NAME = "model.safetensors"
PAD, UNK, CLS = "<pad>", "<unk>", "<cls>"
SPECIAL_TOKENS = (PAD, UNK, CLS)
#: Architecture defaults (about 0.2M parameters).
DEFAULT_ARCHITECTURE: dict[str, int] = {
    "image_size": 32,
    "patch_size": 4,
    "stem_channels": 16,
    "width": 64,
    "layers": 2,
    "heads": 4,
    "mlp_ratio": 2,
    "max_words": 32,
}
# Bounds far beyond any sane verifier: a config beyond them is broken, and is refused before allocating.
_BOUNDS = {
    "image_size": (8, 1024),
    "patch_size": (1, 64),
    "stem_channels": (1, 1024),
    "width": (8, 4096),
    "layers": (1, 64),
    "heads": (1, 64),
    "mlp_ratio": (1, 16),
    "max_words": (4, 1024),
}


def default_vocabulary() -> list[str]:
    """Special tokens, then every token of the shapes caption grammar."""
    from sanatool.shapes import vocabulary

    return [*SPECIAL_TOKENS, *vocabulary()]


def validate_architecture(arch: Any, where: str) -> dict[str, int]:
    """Check an architecture dict (known keys, integers within bounds, consistent sizes)."""
    if not isinstance(arch, dict) or set(arch) != set(DEFAULT_ARCHITECTURE):
        raise ModelDirError(
            f"{where}: 'architecture' must have exactly the keys {sorted(DEFAULT_ARCHITECTURE)}; "
            "was it written by `sanatool train-verifier`?"
        )
    for key, (low, high) in _BOUNDS.items():
        value = arch[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ModelDirError(f"{where}: architecture.{key} must be an integer in [{low}, {high}], got {value!r}")
    if arch["image_size"] % arch["patch_size"]:
        raise ModelDirError(f"{where}: image_size must be a multiple of patch_size")
    if arch["width"] % arch["heads"]:
        raise ModelDirError(f"{where}: width must be a multiple of heads")
    return dict(arch)


def build_model(architecture: dict[str, int], vocab_size: int) -> Any:
    """Instantiate the verifier ``nn.Module`` for an architecture and vocabulary size."""
    import torch
    from torch import nn

    class ShapesVerifier(nn.Module):
        """Image (B×3×H×W in [0, 1]) + word ids (B×L, 0 = padding) → one yes-logit per pair."""

        def __init__(self, arch: dict[str, int], vocab: int) -> None:
            super().__init__()
            width, grid = arch["width"], arch["image_size"] // arch["patch_size"]
            stem = arch["stem_channels"]
            self.stem = nn.Sequential(
                nn.Conv2d(3, stem, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(stem, width, arch["patch_size"], stride=arch["patch_size"]),
            )
            self.image_pos = nn.Parameter(torch.randn(1, grid * grid, width) * 0.02)
            self.words = nn.Embedding(vocab, width, padding_idx=0)
            self.word_pos = nn.Parameter(torch.randn(1, arch["max_words"], width) * 0.02)
            self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
            self.kind = nn.Embedding(3, width)  # cls / word / patch
            layer = nn.TransformerEncoderLayer(
                width, arch["heads"], arch["mlp_ratio"] * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, arch["layers"], enable_nested_tensor=False)
            self.norm = nn.LayerNorm(width)
            self.head = nn.Linear(width, 1)

        def forward(self, pixels: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
            batch = pixels.shape[0]
            patches = self.stem(pixels * 2.0 - 1.0).flatten(2).transpose(1, 2)
            patches = patches + self.image_pos + self.kind.weight[2]
            words = self.words(word_ids) + self.word_pos[:, : word_ids.shape[1]] + self.kind.weight[1]
            cls = self.cls.expand(batch, -1, -1) + self.kind.weight[0]
            tokens = torch.cat([cls, words, patches], dim=1)
            pad = torch.zeros(batch, tokens.shape[1], dtype=torch.bool, device=pixels.device)
            pad[:, 1 : 1 + word_ids.shape[1]] = word_ids == 0
            out = self.encoder(tokens, src_key_padding_mask=pad)
            return self.head(self.norm(out[:, 0])).squeeze(-1)

    return ShapesVerifier(architecture, vocab_size)


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

    def encode_images(self, images: Sequence[Any]) -> Any:
        """Pixels (B × 3 × S × S, floats in [0, 1]) from PIL images, resized to the verifier's size."""
        import numpy as np
        import torch
        from PIL import Image

        arrays = []
        for image in images:
            rgb = image.convert("RGB")
            if rgb.size != (self.image_size, self.image_size):
                rgb = rgb.resize((self.image_size, self.image_size), Image.BILINEAR)
            arrays.append(np.asarray(rgb, dtype=np.uint8))
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        return batch.float() / 255.0


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_NAME
    if not path.is_dir() or not file.is_file():
        raise ModelDirError(
            f"{path} is not a verifier dir: it has no {CONFIG_NAME} (train one with `sanatool train-verifier`)"
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelDirError(f"cannot read {file}: {err}") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelDirError(f"{file} is not a sanatool verifier config (its 'format' is not {FORMAT!r})")
    if config.get("version") != FORMAT_VERSION:
        raise ModelDirError(
            f"{file} has format version {config.get('version')!r}; this sanatool reads version {FORMAT_VERSION}"
        )
    validate_architecture(config.get("architecture"), str(file))
    vocab = config.get("vocabulary")
    if (
        not isinstance(vocab, list)
        or not all(isinstance(w, str) for w in vocab)
        or list(vocab[: len(SPECIAL_TOKENS)]) != list(SPECIAL_TOKENS)
        or len(set(vocab)) != len(vocab)
        or len(vocab) > 100_000
    ):
        raise ModelDirError(f"{file}: 'vocabulary' must be a list of distinct words starting with {SPECIAL_TOKENS}")
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
    model = build_model(config["architecture"], len(config["vocabulary"]))
    try:
        state = load_file(str(root / WEIGHTS_NAME))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise ModelDirError(f"the weights in {root / WEIGHTS_NAME} do not match {CONFIG_NAME}: {err}") from err
    return model.to(device).eval(), config


def verifier_probabilities(model: Any, codec: VerifierCodec, images: Sequence[Any], captions: Sequence[str]) -> Any:
    """P(yes) for each (image, caption) pair, as a 1-D float tensor on the CPU."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(codec.encode_images(images).to(device), codec.encode_words(captions).to(device))
    return torch.sigmoid(logits.float()).cpu()


class VerifierJudge(Judge):
    """Judge with a trained shapes verifier: yes when P(yes) > 0.5, ``p_yes`` = P(yes), score = P(yes)."""

    kind = "verifier"

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        super().__init__()
        self.path = Path(path)
        self.model, self.config = load_verifier(self.path, device)
        arch = self.config["architecture"]
        self.codec = VerifierCodec(self.config["vocabulary"], arch["image_size"], arch["max_words"])

    def describe(self) -> dict[str, Any]:
        """The judge's kind, label, path and its recorded held-out agreement with the evaluator."""
        info = {**super().describe(), "path": str(self.path)}
        agreement = self.config.get("training", {}).get("heldout", {}).get("agreement")
        if agreement is not None:
            info["heldout_agreement"] = agreement
        return info

    def _judge(
        self, images: Sequence[Any], prompts: Sequence[str], specs: Sequence[dict[str, Any] | None]
    ) -> list[Judgement]:
        probs = verifier_probabilities(self.model, self.codec, images, prompts).tolist()
        return [Judgement(score=p, answer=p > 0.5, p_yes=p, p_no=1.0 - p) for p in probs]
