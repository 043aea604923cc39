"""Tiny stand-ins for real SANA checkpoints, built with diffusers and transformers directly.

Nothing here uses sanatool: the checkpoints are what diffusers' ``save_pretrained`` writes for
real-class models (``SanaTransformer2DModel``, ``AutoencoderDC``, ``Gemma2Model`` with a real
SentencePiece Gemma tokenizer, the Flow-DPM-Solver or flow-matching Euler scheduler), assembled into
``SanaPipeline`` / ``SanaControlNetPipeline``, optionally saved with ``variant=`` and sharded, and
laid out as the Hugging Face hub cache does (:func:`hub_snapshot`). So a test that passes on them
passes because sanatool reads what users hold, not because it reads its own writing.

Sizes are tiny (a pipeline builds and saves in well under a second); build each layout once per
session in a session-scoped fixture.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

#: Words the tokenizer is trained on (and that prompts in tests should use).
WORDS = (
    "a an the one two three four red green blue yellow purple orange white black circle square "
    "triangle cat dog house tree car boat bird flower on of under above below left right big small "
    "photo painting city night sky river mountain with and in at beside"
).split()

#: The tiny transformer's config (SANA 1.5 style: QK-norm); ``transformer_config(**overrides)`` varies it.
TRANSFORMER_CONFIG: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "num_layers": 6,
    "num_cross_attention_heads": 2,
    "cross_attention_head_dim": 16,
    "cross_attention_dim": 32,
    "caption_channels": 32,
    "mlp_ratio": 2.5,
    "sample_size": 8,
    "patch_size": 1,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "qk_norm": "rms_norm_across_heads",
}

#: The tiny DC-AE: three stages, so the VAE factor is 4 (32 px images, the smallest SanaPipeline takes; 8×8 latents).
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "latent_channels": 4,
    "attention_head_dim": 8,
    "encoder_block_types": ["ResBlock", "ResBlock", "ResBlock"],
    "decoder_block_types": ["ResBlock", "ResBlock", "ResBlock"],
    "encoder_block_out_channels": [8, 8, 16],
    "decoder_block_out_channels": [8, 8, 16],
    "encoder_layers_per_block": [1, 1, 1],
    "decoder_layers_per_block": [1, 1, 1],
    "encoder_qkv_multiscales": [[], [], []],
    "decoder_qkv_multiscales": [[], [], []],
    "upsample_block_type": "interpolate",
    "downsample_block_type": "Conv",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "scaling_factor": 0.41407,
}

IMAGE_SIZE = 32


def transformer_config(**overrides: Any) -> dict[str, Any]:
    """The tiny transformer config with ``overrides`` applied."""
    return {**TRANSFORMER_CONFIG, **overrides}


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    """Give every parameter random values, so no test passes because something was initialised to zero.

    1-d weights (norm scales) stay near one; everything else gets N(0, scale²)·(1/√fan-in for matrices).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if param.ndim == 1 and name.endswith("weight"):
                value = 1 + 0.1 * noise
            elif param.ndim >= 2:
                value = noise * (scale / max(1, param[0].numel()) ** 0.5) * 4
            else:
                value = noise * scale
            param.copy_(value.to(param.dtype))
    return module


@functools.cache
def sentencepiece_model() -> bytes:
    """A real SentencePiece BPE model with Gemma's special tokens, trained once per session on :data:`WORDS`."""
    import sentencepiece as spm

    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(400)]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buffer,
        vocab_size=128,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        control_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"],
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_by_whitespace=False,
        minloglevel=2,
        num_threads=1,
    )
    return buffer.getvalue()


def gemma_tokenizer() -> Any:
    """transformers' ``GemmaTokenizer`` (tokenizers backend) for :func:`sentencepiece_model`.

    Built from the SentencePiece vocabulary and its BPE merges (transformers' converter needs
    protobuf for ``tokenizer.model``; the vocabulary and merges are the same), so it tokenizes
    exactly as SentencePiece does.
    """
    import sentencepiece as spm
    from transformers import GemmaTokenizer
    from transformers.convert_slow_tokenizer import generate_merges

    processor = spm.SentencePieceProcessor(model_proto=sentencepiece_model())
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=generate_merges(vocab))
    return tokenizer


def make_transformer(seed: int = 0, **overrides: Any) -> Any:
    """A randomized tiny ``SanaTransformer2DModel`` (fp32)."""
    from diffusers import SanaTransformer2DModel

    return randomize(SanaTransformer2DModel(**transformer_config(**overrides)), seed).eval()


def make_controlnet(transformer: Any, num_layers: int = 2, seed: int = 7) -> Any:
    """A randomized ``SanaControlNetModel`` matching ``transformer`` (its residuals are not zero)."""
    from diffusers import SanaControlNetModel

    config = transformer.config
    controlnet = SanaControlNetModel(
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        num_attention_heads=config.num_attention_heads,
        attention_head_dim=config.attention_head_dim,
        num_layers=num_layers,
        num_cross_attention_heads=config.num_cross_attention_heads,
        cross_attention_head_dim=config.cross_attention_head_dim,
        cross_attention_dim=config.cross_attention_dim,
        caption_channels=config.caption_channels,
        mlp_ratio=config.mlp_ratio,
        sample_size=config.sample_size,
        patch_size=config.patch_size,
    )
    return randomize(controlnet, seed).eval()


def make_vae(seed: int = 1) -> Any:
    """A randomized tiny ``AutoencoderDC`` (VAE factor 4)."""
    from diffusers import AutoencoderDC

    return randomize(AutoencoderDC(**VAE_CONFIG), seed, scale=0.1).eval()


def make_text_encoder(seed: int = 2, vocab_size: int | None = None) -> Any:
    """A randomized tiny transformers ``Gemma2Model`` whose vocabulary fits :func:`gemma_tokenizer`."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=vocab_size or len(gemma_tokenizer()),
        hidden_size=TRANSFORMER_CONFIG["caption_channels"],
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(seed)
    return Gemma2Model(config).eval()


def make_scheduler(kind: str = "dpm") -> Any:
    """SANA's schedulers: ``dpm`` (Flow-DPM-Solver, the SanaPipeline default) or ``euler`` (flow matching)."""
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    if kind == "dpm":
        return DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++",
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=3.0,
            solver_order=2,
            final_sigmas_type="zero",
        )
    if kind == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=3.0)
    raise ValueError(f"unknown scheduler kind {kind!r}")


def make_pipeline(
    seed: int = 0,
    scheduler: str = "dpm",
    controlnet_layers: int | None = None,
    dtype: torch.dtype | None = None,
    **transformer_overrides: Any,
) -> Any:
    """A tiny ``SanaPipeline`` (or ``SanaControlNetPipeline`` with ``controlnet_layers``), in memory.

    ``dtype`` casts every model (as a bf16 repo stores them).
    """
    from diffusers import SanaControlNetPipeline, SanaPipeline

    transformer = make_transformer(seed, **transformer_overrides)
    parts = {
        "tokenizer": gemma_tokenizer(),
        "text_encoder": make_text_encoder(seed + 2),
        "vae": make_vae(seed + 1),
        "transformer": transformer,
        "scheduler": make_scheduler(scheduler),
    }
    if controlnet_layers is None:
        pipe = SanaPipeline(**parts)
    else:
        pipe = SanaControlNetPipeline(
            **parts, controlnet=make_controlnet(transformer, controlnet_layers, seed + 7)
        )
    if dtype is not None:
        pipe.to(dtype)
    return pipe


def save_pipeline(
    pipe: Any, out: str | os.PathLike, variant: str | None = None, max_shard_size: str | int | None = None
) -> Path:
    """``pipe.save_pretrained(out, variant=..., max_shard_size=...)`` plus the tokenizer's ``tokenizer.model``
    (real repos ship it beside ``tokenizer.json``). Returns ``out``."""
    out = Path(out)
    kwargs: dict[str, Any] = {"safe_serialization": True}
    if variant is not None:
        kwargs["variant"] = variant
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    pipe.save_pretrained(out, **kwargs)
    (out / "tokenizer" / "tokenizer.model").write_bytes(sentencepiece_model())
    return out


def save_transformer(
    model: Any, out: str | os.PathLike, variant: str | None = None, max_shard_size: str | int | None = None
) -> Path:
    """A bare transformer dir as diffusers writes it (``config.json`` + weights). Returns ``out``."""
    kwargs: dict[str, Any] = {"safe_serialization": True}
    if variant is not None:
        kwargs["variant"] = variant
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(out, **kwargs)
    return Path(out)


def hub_snapshot(
    src_dir: str | os.PathLike, cache_root: str | os.PathLike, repo_id: str, revision: str | None = None
) -> Path:
    """Lay ``src_dir`` out as huggingface_hub's cache does after ``snapshot_download(repo_id)``.

    ``cache_root/models--ORG--NAME/blobs/<sha256>`` hold the bytes, ``snapshots/<rev>/...`` hold
    relative symlinks ``../../blobs/<sha256>`` (one more ``../`` per subfolder), and ``refs/main``
    names the revision. Returns the snapshot dir (what ``snapshot_download`` returns). (The hub names
    LFS blobs by their sha256 and small files by their git hash; every blob here is named by its sha256,
    which readers cannot tell apart.)
    """
    src = Path(src_dir)
    repo = Path(cache_root) / ("models--" + repo_id.replace("/", "--"))
    revision = revision or hashlib.sha1(repo_id.encode()).hexdigest()
    blobs = repo / "blobs"
    snapshot = repo / "snapshots" / revision
    blobs.mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            shutil.copyfile(file, blob)
        relative = file.relative_to(src)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
