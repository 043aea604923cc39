"""The ``clip:PATH`` judge: CLIP score of each image with its prompt, from a local transformers CLIPModel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sanatool.errors import ModelDirError
from sanatool.judges.base import Judge, Judgement


class ClipJudge(Judge):
    """Score = 100 · cos(image embedding, prompt embedding), as CLIPScore reports it.

    A score-only judge: a tournament match goes to the higher score. The model dir is what
    ``CLIPModel.save_pretrained`` + ``CLIPProcessor.save_pretrained`` write.
    """

    kind = "clip"

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        super().__init__()
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.path = Path(path)
        try:
            self.processor = CLIPProcessor.from_pretrained(self.path)
            self.model = CLIPModel.from_pretrained(self.path).to(device).eval()
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ModelDirError(
                f"cannot load a CLIP model and processor from {self.path}: {err}; "
                "save both with save_pretrained into that dir"
            ) from err
        self.device = torch.device(device)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    def describe(self) -> dict[str, Any]:
        """The judge's kind, label and model path."""
        return {**super().describe(), "path": str(self.path)}

    def _judge(
        self, images: Sequence[Any], prompts: Sequence[str], specs: Sequence[dict[str, Any] | None]
    ) -> list[Judgement]:
        import torch

        inputs = self.processor(
            text=list(prompts),
            images=[image.convert("RGB") for image in images],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
        ).to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        # CLIPModel returns L2-normalised embeddings; pair image i with its own prompt i.
        cosine = (outputs.image_embeds * outputs.text_embeds).sum(dim=-1).float().cpu()
        return [Judgement(score=100.0 * float(value)) for value in cosine]
