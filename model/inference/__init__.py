"""Inference: the sampler (``sampling``), the picture to the model's square and back
(``images``), the completion use case, the familiarity measure."""
