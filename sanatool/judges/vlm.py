"""The ``vlm:PATH`` judge: a local transformers image-text-to-text model asked a yes/no question.

As SANA 1.5 does with NVILA: ask "does this image match the prompt? answer yes or no", and
read the logits of the first generated token. ``p_yes`` / ``p_no`` are the softmax
probabilities (over the whole vocabulary) of the yes / no answer tokens, so "both yes → the
higher yes-probability wins; both no → the lower no-probability wins" compares real
confidences. The answer is yes when ``p_yes > p_no``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sanatool.errors import InputError, ModelDirError
from sanatool.judges.base import Judge, Judgement

#: NVILA-style verification question; ``{prompt}`` is replaced by the image's prompt.
DEFAULT_TEMPLATE = 'Does this image match the prompt "{prompt}"? Answer yes or no.'
YES_WORDS = ("yes", "Yes")
NO_WORDS = ("no", "No")


def check_template(template: str) -> str:
    """Validate a question template: it must contain ``{prompt}`` and no other field."""
    if not isinstance(template, str) or "{prompt}" not in template:
        raise InputError(f"--template must contain {{prompt}}, got {template!r}")
    try:
        template.format(prompt="x")
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(
            f"--template {template!r} is not a valid format string ({err}); use {{prompt}} only, "
            "and double other braces"
        ) from err
    return template


class VlmJudge(Judge):
    """Yes/no verification by a vision-language model (``AutoModelForImageTextToText`` + ``AutoProcessor``).

    The question goes through the processor's chat template when it has one (as a user turn
    holding the image and the text, with the generation prompt), else after the processor's
    image token.
    """

    kind = "vlm"

    def __init__(self, path: str | Path, device: str = "cpu", template: str = DEFAULT_TEMPLATE) -> None:
        super().__init__()
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.path = Path(path)
        self.template = check_template(template)
        try:
            self.processor = AutoProcessor.from_pretrained(self.path)
            self.model = AutoModelForImageTextToText.from_pretrained(self.path).to(device).eval()
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ModelDirError(
                f"cannot load an image-text-to-text model and processor from {self.path}: {err}; "
                "save both with save_pretrained into that dir"
            ) from err
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ModelDirError(f"the processor in {self.path} has no tokenizer; a VLM judge needs one")
        # Batches end where generation starts: pad on the left.
        self.tokenizer.padding_side = "left"
        self.yes_ids = self._answer_ids(YES_WORDS)
        self.no_ids = self._answer_ids(NO_WORDS)
        if set(self.yes_ids) & set(self.no_ids):
            raise ModelDirError(f"the tokenizer in {self.path} maps 'yes' and 'no' to the same token")
        self.device = torch.device(device)

    def _answer_ids(self, words: Sequence[str]) -> list[int]:
        """The first token of each spelling of an answer word (with and without a leading space)."""
        unknown = self.tokenizer.unk_token_id
        ids: list[int] = []
        for word in words:
            for spelling in (word, f" {word}"):
                tokens = self.tokenizer.encode(spelling, add_special_tokens=False)
                if tokens and tokens[0] != unknown and tokens[0] not in ids:
                    ids.append(tokens[0])
        if not ids:
            raise ModelDirError(
                f"the tokenizer in {self.path} has no token for {'/'.join(words)}; a VLM judge answers yes or no"
            )
        return ids

    def describe(self) -> dict[str, Any]:
        """The judge's kind, label, model path and question template."""
        return {**super().describe(), "path": str(self.path), "template": self.template}

    def question(self, prompt: str) -> str:
        """The full text given to the processor for one prompt."""
        text = self.template.format(prompt=prompt)
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        image_token = getattr(self.processor, "image_token", None)
        return f"{image_token}\n{text}" if image_token else text

    def first_token_logits(self, images: Sequence[Any], prompts: Sequence[str]) -> Any:
        """Raw logits (batch × vocab) of the first token the model would generate for each question."""
        import torch

        inputs = self.processor(
            text=[self.question(prompt) for prompt in prompts],
            images=[image.convert("RGB") for image in images],
            return_tensors="pt",
            padding=True,
        ).to(self.device)
        with torch.inference_mode():
            # generate() builds position ids (and multimodal rope) from the left-padded mask the
            # way real decoding does; output_logits are the raw, unprocessed logits.
            out = self.model.generate(
                **inputs,
                max_new_tokens=1,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return out.logits[0].float().cpu()

    def _judge(
        self, images: Sequence[Any], prompts: Sequence[str], specs: Sequence[dict[str, Any] | None]
    ) -> list[Judgement]:
        probs = self.first_token_logits(images, prompts).softmax(dim=-1)
        p_yes = probs[:, self.yes_ids].sum(dim=-1).tolist()
        p_no = probs[:, self.no_ids].sum(dim=-1).tolist()
        out = []
        for yes, no in zip(p_yes, p_no, strict=True):
            total = yes + no
            out.append(
                Judgement(score=yes / total if total > 0 else 0.5, answer=yes > no, p_yes=yes, p_no=no)
            )
        return out
