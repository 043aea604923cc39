"""Training the text encoder together with the transformer (``--train-text-encoder``).

SANA freezes its text encoder: Gemma-2 arrives pretrained, and its hidden states already say which
colour goes with which shape and what is left of what. The shapes world's tiny Gemma2 starts
random, so frozen it hands the transformer little more than a bag of words, and the model mixes up
colours between objects. Training it with the denoising loss, as one model with the transformer,
gives it the contextual features a pretrained encoder would have. The pipeline keeps encoding
prompts exactly as diffusers does (:func:`sanatool.inference.text.tokenize_prompts` feeds the encoder the
same ids and mask as ``SanaPipeline.encode_prompt``), so the trained encoder loads and samples in
diffusers unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sanatool.errors import ModelDirError

#: State-dict prefixes of the two halves of :class:`TextConditionedTransformer`.
TRANSFORMER_PREFIX = "transformer."
TEXT_ENCODER_PREFIX = "text_encoder."


class TextConditionedTransformer(torch.nn.Module):
    """The transformer with its text encoder in front: the forward pass takes token ids, not embeddings."""

    def __init__(self, transformer: Any, text_encoder: Any) -> None:
        super().__init__()
        self.transformer = transformer
        self.text_encoder = text_encoder

    def forward(self, hidden_states: Any, input_ids: Any, attention_mask: Any, timestep: Any) -> Any:
        """The transformer's flow prediction for noisy latents, conditioned on the encoded ids."""
        embeds = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.transformer(
            hidden_states,
            encoder_hidden_states=embeds,
            timestep=timestep,
            encoder_attention_mask=attention_mask,
            return_dict=False,
        )[0]


def load_text_encoder(pipeline_dir: Path) -> Any:
    """A pipeline dir's text encoder in fp32 (the master weights), in training mode."""
    from transformers import AutoModel

    from sanatool.quiet import quiet_loading

    try:
        with quiet_loading():
            encoder = AutoModel.from_pretrained(pipeline_dir / "text_encoder", dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelDirError(f"cannot load the text encoder in {pipeline_dir}: {err}") from err
    return encoder.train()


def split_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A :class:`TextConditionedTransformer` state dict as (transformer's, text encoder's)."""
    halves: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    for name, tensor in state.items():
        if name.startswith(TRANSFORMER_PREFIX):
            halves[0][name.removeprefix(TRANSFORMER_PREFIX)] = tensor
        elif name.startswith(TEXT_ENCODER_PREFIX):
            halves[1][name.removeprefix(TEXT_ENCODER_PREFIX)] = tensor
        else:
            raise ValueError(f"unexpected weight {name} in a text-conditioned state dict")
    return halves


def write_text_encoder(root: Path, text_encoder: Any, state: dict[str, Any], dtype: str) -> None:
    """Replace ``root/text_encoder`` (a carried link to the parent's) with these weights in ``dtype``.

    The carried files are hard links to the parent's, so the folder is removed, never written into.
    """
    import shutil

    from sanatool.arch import torch_dtype

    folder = root / "text_encoder"
    shutil.rmtree(folder, ignore_errors=True)
    target = torch_dtype(dtype)
    casted = {name: tensor.to(target).contiguous() for name, tensor in state.items()}
    text_encoder.save_pretrained(folder, state_dict=casted, safe_serialization=True)
    # save_pretrained records the live module's dtype (fp32 master weights); loaders read this one.
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = str(target).removeprefix("torch.")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
