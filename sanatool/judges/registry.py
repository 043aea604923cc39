"""``--judge`` specs: parse and validate them cheaply (before any work), then load the judge.

``shapes`` (the rule-based evaluator, an oracle), ``clip:PATH`` (a transformers CLIPModel dir),
``vlm:PATH`` (a transformers image-text-to-text model dir), ``verifier`` (the learned shapes
verifier shipped in the package) or ``verifier:PATH`` (one trained by ``sanatool train-verifier``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanatool.errors import InputError, ModelDirError
from sanatool.io.jsonl import read_json_object
from sanatool.judges.base import Judge

JUDGE_KINDS = ("shapes", "clip", "vlm", "verifier")
_USAGE = "use shapes, verifier, verifier:PATH, clip:PATH or vlm:PATH"
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


@dataclass(frozen=True)
class JudgeSpec:
    """A parsed ``--judge``: its kind and, for model judges, the model dir."""

    kind: str
    path: Path | None = None

    @property
    def needs_spec(self) -> bool:
        """Whether this judge checks each prompt's ``spec`` (only the shapes oracle does)."""
        return self.kind == "shapes"

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def _model_config(path: Path, kind: str, what: str) -> dict[str, Any]:
    if not path.is_dir():
        raise ModelDirError(f"--judge {kind}:{path}: no such directory; give the dir holding {what}")
    file = path / "config.json"
    if not file.is_file():
        raise ModelDirError(
            f"--judge {kind}:{path} is not a transformers model dir (no config.json); it must hold {what}"
        )
    config = read_json_object(file, "config", ModelDirError)
    if not any((path / name).is_file() for name in _PROCESSOR_FILES):
        raise ModelDirError(
            f"--judge {kind}:{path} has no processor ({' or '.join(_PROCESSOR_FILES)}); "
            "save the processor with save_pretrained into the same dir"
        )
    return config


def _check_clip(path: Path) -> None:
    config = _model_config(path, "clip", "a CLIPModel and its CLIPProcessor")
    if config.get("model_type") != "clip":
        raise ModelDirError(
            f"--judge clip:{path} is a {config.get('model_type')!r} model, not CLIP (config.json model_type must be 'clip')"
        )


def _check_vlm(path: Path) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    config = _model_config(path, "vlm", "an image-text-to-text model and its processor")
    model_type = config.get("model_type")
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ModelDirError(
            f"--judge vlm:{path} is a {model_type!r} model, which transformers cannot load as "
            "image-text-to-text (AutoModelForImageTextToText); give a vision-language model dir"
        )


def parse_judge_spec(text: str) -> JudgeSpec:
    """Parse and validate a ``--judge`` value from files' headers and configs only (no weights loaded).

    Raises :class:`InputError` for an unknown kind or a missing path, and
    :class:`ModelDirError` for a path that is not a model of the expected type.
    """
    from sanatool.judges.verifier import check_verifier_dir

    if not isinstance(text, str) or not text.strip():
        raise InputError(f"--judge is empty; {_USAGE}")
    kind, sep, rest = text.strip().partition(":")
    if kind not in JUDGE_KINDS:
        raise InputError(f"--judge {text}: unknown judge kind {kind!r}; {_USAGE}")
    if kind == "shapes":
        if sep:
            raise InputError(f"--judge {text}: the shapes judge takes no path; write --judge shapes")
        return JudgeSpec("shapes")
    if kind == "verifier" and not sep:
        from sanatool.judges.verifier import shipped_verifier_path

        path = shipped_verifier_path()
        check_verifier_dir(path)
        return JudgeSpec("verifier", path)
    if not rest:
        shipped = " (or --judge verifier for the shipped one)" if kind == "verifier" else ""
        raise InputError(
            f"--judge {text}: the {kind} judge needs a model dir; write --judge {kind}:PATH{shipped}"
        )
    path = Path(rest).expanduser()
    if kind == "clip":
        _check_clip(path)
    elif kind == "vlm":
        _check_vlm(path)
    else:
        if not path.is_dir():
            raise ModelDirError(
                f"--judge verifier:{path}: no such directory; train one with `sanatool train-verifier`"
            )
        check_verifier_dir(path)
    return JudgeSpec(kind, path)


def load_judge(spec: JudgeSpec | str, device: str = "cpu", template: str | None = None) -> Judge:
    """Load the judge a spec names. ``template`` (the VLM question, with ``{prompt}``) is for ``vlm`` only."""
    parsed = parse_judge_spec(spec) if isinstance(spec, str) else spec
    if template is not None and parsed.kind != "vlm":
        raise InputError(f"--template applies to vlm judges only, not {parsed.kind}")
    if parsed.kind == "shapes":
        from sanatool.judges.oracle import ShapesOracleJudge

        return ShapesOracleJudge()
    assert parsed.path is not None  # parse_judge_spec guarantees a path for model judges
    if parsed.kind == "clip":
        from sanatool.judges.clip import ClipJudge

        return ClipJudge(parsed.path, device=device)
    if parsed.kind == "vlm":
        from sanatool.judges.vlm import DEFAULT_TEMPLATE, VlmJudge

        return VlmJudge(parsed.path, device=device, template=template or DEFAULT_TEMPLATE)
    from sanatool.judges.verifier import VerifierJudge

    return VerifierJudge(parsed.path, device=device)
