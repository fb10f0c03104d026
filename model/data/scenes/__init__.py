"""Procedural caption–image scenes: the default training data and its exact fidelity check.

Every scene is drawn from a numpy Generator seeded by ``(seed, index, split)``, so sample ``index``
is the same image and caption whatever the worker count. A scene is 1–4 objects (palette shapes,
optionally emoji) in distinct cells of a 3×3 grid over a plain or two-tone background, rendered at
4× and box-filtered down. Its caption states counts, places, relations and the background in one
of several phrasings; the structured form of what it states (:class:`CaptionSpec`) is kept in the
scene's JSON, and :func:`parse_caption` recovers it from the caption text alone.

:func:`score` reads an image back (nearest palette colour per pixel, connected blobs, shape by
template overlap, 3×3 place, small/large) and checks each stated fact, which is how the caption
fidelity of a trained model is measured (docs/DESIGN.md §4). Colour–shape pairs in
:data:`HELDOUT_PAIRS` are never rendered in the training split, so zero-shot composition can be
measured on the ``"heldout"`` split.

One module per concern, in dependency order: ``vocabulary`` (the words), ``spec`` (the structured
form), ``shapes`` (how one object looks), ``captions`` (writing and parsing), ``sample`` (drawing a
scene), ``rendering``, ``dataset`` (writing files), ``detection`` (reading an image back) and
``scoring``. The names below are the package's public face.
"""

from model.data.scenes.captions import MAX_CAPTION_WORDS, parse_caption
from model.data.scenes.dataset import write_scenes
from model.data.scenes.detection import Detection, detect
from model.data.scenes.rendering import COMPLETION_CELL, completion_case, render, render_scene
from model.data.scenes.sample import sample_spec, scene_rng
from model.data.scenes.scoring import FactCheck, ScoreResult, fidelity_table, score
from model.data.scenes.shapes import EMOJI_FONT_PATH, emoji_available
from model.data.scenes.spec import (
    Background,
    BackgroundRef,
    CaptionSpec,
    Clause,
    ObjectRef,
    SceneObject,
    SceneSpec,
)
from model.data.scenes.vocabulary import (
    COLOURS,
    EMOJI,
    HELDOUT_PAIRS,
    LAYOUTS,
    PALETTE,
    PLACE_CELLS,
    PLACES,
    RELATIONS,
    SHAPES,
    SIZES,
    SPLITS,
)

__all__ = [
    "COLOURS",
    "COMPLETION_CELL",
    "EMOJI",
    "EMOJI_FONT_PATH",
    "HELDOUT_PAIRS",
    "LAYOUTS",
    "MAX_CAPTION_WORDS",
    "PALETTE",
    "PLACES",
    "PLACE_CELLS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "Background",
    "BackgroundRef",
    "CaptionSpec",
    "Clause",
    "Detection",
    "FactCheck",
    "ObjectRef",
    "SceneObject",
    "SceneSpec",
    "ScoreResult",
    "completion_case",
    "detect",
    "emoji_available",
    "fidelity_table",
    "parse_caption",
    "render",
    "render_scene",
    "sample_spec",
    "scene_rng",
    "score",
    "write_scenes",
]
