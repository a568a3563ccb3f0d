"""Models: the CLIP-layout ViT backbone (:mod:`~plaindet.models.vit`) and its weight loading
(:mod:`~plaindet.models.clip_weights`), the neck, the heads and the detector that composes them."""
