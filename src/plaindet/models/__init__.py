"""Models: every registered detector family, the parts they share, and the factory that builds them.

- :mod:`~plaindet.models.factory`: ``create_model``, ``list_models``, ``load_model``; it imports every
  family, whose variants register in :mod:`~plaindet.models.registry`.
- Families: :mod:`~plaindet.models.plaindet` (the flagship: ViT, feature pyramid, one-to-one head),
  :mod:`~plaindet.models.detr`, :mod:`~plaindet.models.deperceiver`, :mod:`~plaindet.models.patchtok`.
- Backbones and their weights: :mod:`~plaindet.models.vit` (CLIP and DeiT) with
  :mod:`~plaindet.models.vit_weights`, :mod:`~plaindet.models.resnet`, :mod:`~plaindet.models.bit`
  (BiT's ResNet-v2) with :mod:`~plaindet.models.bit_weights`.
- Shared parts: :mod:`~plaindet.models.layers`, :mod:`~plaindet.models.base` (the model contract),
  :mod:`~plaindet.models.lora`; losses in :mod:`~plaindet.models.one_to_one` and
  :mod:`~plaindet.models.set_criterion`.
"""
