"""Bounds for every config read from a file (a bundle, a dVAE, an imported checkpoint's config),
checked before a model is built from it."""

# Bounds for every config read from a file (a bundle, a dVAE), checked before a model is built
# from it: wide enough for the DALL·E family that importers bring (DALL·E Mega: dim 2048, 24 + 24
# layers, 50264 text and 16384 image codes, text_len 64; ruDALL-E XL: dim 2560, depth 32,
# text_len 128, a 32x32 grid of 8192 codes at 256 px), narrow enough that a file cannot make
# the loader build a million layers or a 20000-wide model before its tensors are checked.
MAX_DIM = 16384
MAX_DEPTH = 256
MAX_VOCAB = 2**20
MAX_TEXT_LEN = 4096
MAX_GRID = 128
MAX_IMAGE_SIZE = 4096
MAX_GROUPS = 8  # dVAE downsampling 2**7 = 128
MAX_BLOCKS = 64  # dVAE blocks per group
MAX_CHANNELS = 4
MAX_PATCH = 64  # VQ PixelUnshuffle factor: 3 * 64**2 = 12288 channels into the first conv
