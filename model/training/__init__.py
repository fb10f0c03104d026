"""Training: the trainer (``trainer``) and the stage recipes (``train``)."""
