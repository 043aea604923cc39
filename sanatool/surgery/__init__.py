"""Model surgery without loading the model: ``init``, ``grow``, ``prune`` and ``info``.

:mod:`~sanatool.surgery.plan` holds the plan that grow and prune both build (which source block
goes where, what is new) and its streaming execution; :mod:`~sanatool.surgery.blocks` the block
lists and the bytes of new blocks; :mod:`~sanatool.surgery.initialize` random-init checkpoints.
"""
