"""The CLIP and VLM judges, on tiny random transformers models built and saved locally (no downloads)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "yes", "no", "Yes", "No", "USER", "ASSISTANT", ":", "?"]


def word_tokenizer(extra_words: list[str], with_image: bool = False):
    """A whitespace word-level tokenizer over a fixed vocabulary, built with ``tokenizers``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(dict.fromkeys(WORDS + extra_words))}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Replace('"', " ")
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if not with_image:  # CLIP-style: the text is wrapped in <s> … </s>
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        model_max_length=64,
    )  # fmt: skip
    if with_image:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer, vocab


def shapes_words() -> list[str]:
    from sanatool.judges.vlm import DEFAULT_TEMPLATE
    from sanatool.shapes import vocabulary

    return vocabulary() + DEFAULT_TEMPLATE.replace('"', " ").replace("?", " ? ").split()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer, vocab = word_tokenizer(shapes_words())
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=32, bos_token_id=2, eos_token_id=3, pad_token_id=0)  # fmt: skip
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
    )
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer,
    )
    out = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    """A tiny LLaVA (CLIP vision tower + Llama text model) with a chat template."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer, vocab = word_tokenizer(shapes_words(), with_image=True)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=16, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1, pad_token_id=0),
        image_token_index=vocab["<image>"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    chat = (
        "{% for m in messages %}USER : {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %} ASSISTANT :{% endif %}"
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=chat,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("vlm") / "tiny-llava"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Two prompts with three candidates each (an odd count: the tournament needs a bye)."""
    from sanatool.io.manifest import image_relpath, write_manifest
    from sanatool.shapes import evaluation_suite, mismatched_spec, render_spec

    suite = evaluation_suite()
    root = tmp_path_factory.mktemp("s") / "samples"
    (root / "images").mkdir(parents=True)
    rows, rng = [], random.Random(1)
    for p, item in enumerate([suite[0], suite[200]]):
        for c in range(3):
            spec = item.spec if c == 0 else mismatched_spec(item.spec, item.category, rng)
            render_spec(spec, size=32, seed=c).save(root / image_relpath(p, c))
            rows.append({"prompt": item.prompt, "prompt_index": p, "candidate": c, "path": image_relpath(p, c),
                         "spec": item.spec, "category": item.category})  # fmt: skip
    write_manifest(root / "manifest.jsonl", rows)
    return root


def load_images(root: Path):
    from PIL import Image

    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    return [Image.open(root / r["path"]).convert("RGB") for r in rows], [r["prompt"] for r in rows]


def test_clip_judge_scores_are_clip_cosines(clip_dir, samples):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from sanatool.judges.registry import load_judge

    judge = load_judge(f"clip:{clip_dir}")
    assert judge.label == "clip" and not judge.oracle
    images, prompts = load_images(samples)
    judged = judge.judge(images, prompts, [None] * len(images))
    assert judge.calls == len(images) and all(j.answer is None for j in judged)
    # Reference: the model's own image/text features, one pair at a time.
    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    for image, prompt, j in zip(images, prompts, judged, strict=True):
        inputs = processor(text=[prompt], images=[image], return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs)
        cosine = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
        assert j.score == pytest.approx(100 * cosine, abs=1e-4)


def test_vlm_judge_reads_first_token_yes_no_logits(vlm_dir, samples):
    import torch

    from sanatool.judges.registry import load_judge

    judge = load_judge(f"vlm:{vlm_dir}", template="Is this {prompt} ? Answer yes or no")
    images, prompts = load_images(samples)
    question = judge.question(prompts[0])
    assert question.startswith("USER : <image> Is this ") and question.endswith("ASSISTANT :")
    batched = judge.judge(images, prompts, [None] * len(images))
    vocab = judge.tokenizer.get_vocab()
    assert sorted(judge.yes_ids) == sorted([vocab["yes"], vocab["Yes"]])
    for image, prompt, j in zip(images, prompts, batched, strict=True):
        # Reference: one unbatched forward pass (no padding); its last-position logits are what
        # greedy decoding picks the first token from.
        inputs = judge.processor(text=[judge.question(prompt)], images=[image], return_tensors="pt")
        with torch.no_grad():
            logits = judge.model(**inputs).logits[0, -1]
        probs = logits.softmax(-1)
        assert j.p_yes == pytest.approx((probs[vocab["yes"]] + probs[vocab["Yes"]]).item(), rel=1e-4)
        assert j.p_no == pytest.approx((probs[vocab["no"]] + probs[vocab["No"]]).item(), rel=1e-4)
        assert j.answer == (j.p_yes > j.p_no)
        assert j.score == pytest.approx(j.p_yes / (j.p_yes + j.p_no))


def test_judge_cli_with_clip_and_vlm(cli, clip_dir, vlm_dir, samples, tmp_path):
    for spec, mode in (
        (f"clip:{clip_dir}", "tournament"),
        (f"vlm:{vlm_dir}", "tournament"),
        (f"vlm:{vlm_dir}", "score"),
    ):
        out = tmp_path / f"{spec.split(':')[0]}-{mode}"
        res = cli(
            "judge",
            samples,
            "-o",
            out,
            "--judge",
            spec,
            "--mode",
            mode,
            "--pick",
            "2",
            "--device",
            "cpu",
            "--json",
        )
        assert res.code == 0, res.stderr
        summary = json.loads(res.stdout)
        assert summary["judge"]["oracle"] is False and "note" not in summary
        assert summary["judge_calls"] == 6 and summary["matches"] == (2 if mode == "tournament" else 0)
        scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
        assert len(scores) == 6 and sum(r["picked"] for r in scores) == 4
        if spec.startswith("vlm"):
            assert all(r["answer"] in ("yes", "no") and 0 <= r["p_yes"] <= 1 for r in scores)
    # A model dir of the wrong type is refused before any work.
    for spec in (f"vlm:{clip_dir}", f"clip:{vlm_dir}"):
        res = cli("judge", samples, "-o", tmp_path / "bad", "--judge", spec)
        assert res.code == 2 and not (tmp_path / "bad").exists(), res.stderr
