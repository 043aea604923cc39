"""Flow-matching training and fine-tuning of SANA transformers (``sanatool train`` / ``finetune``).

The pieces, one job each: :mod:`~sanatool.training.data` (image-folder data sets),
:mod:`~sanatool.training.cache` (latents and caption embeddings, keyed by the encoders),
:mod:`~sanatool.training.loop` (the flow-matching step), :mod:`~sanatool.training.state`
(pickle-free resumable state), :mod:`~sanatool.training.distributed` (torchrun, DDP, FSDP2),
:mod:`~sanatool.training.budget` (``--dry-run`` memory), :mod:`~sanatool.training.checkpoints`
(the run dir: checkpoints and resume), :mod:`~sanatool.training.run` (a whole run).

Example::

    from sanatool.training import TrainOptions, run_training
    run_training(TrainOptions(source="builtin:tiny-shapes", data="shapes/", out="ft", steps=100))
"""

from sanatool.training.options import TrainOptions
from sanatool.training.run import run_training

__all__ = ["TrainOptions", "run_training"]
