"""The reranker: hard negatives, its loss, that it learns, and that sampling orders by it."""

from __future__ import annotations

import torch

from model.config import RerankerConfig, SamplingOptions
from model.data.scenes import sample_spec, scene_rng
from model.inference.sampling import generate, run
from model.networks.rerank import SWAP_GROUPS, Reranker, hard_negative
from tests.helpers import tiny_bundle

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def test_hard_negative_swaps_one_word_within_its_group():
    caption = "two red stars above a small blue heart, on a white background"
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        negative = hard_negative(caption, generator)
        before, after = caption.split(" "), negative.split(" ")
        assert len(before) == len(after)
        changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
        assert len(changed) == 1
        old, new = (w.rstrip(",") for w in changed[0])
        assert any(old in group and new in group for group in SWAP_GROUPS)
        seen.add(old)
    assert {"red", "stars", "above", "small", "heart", "white"} <= seen
    assert hard_negative("a photo of a cat", generator) is None


def test_swap_words_are_the_scenes_words_the_reranker_was_trained_with():
    # Pinned: the groups (and their order, which torch.randint picks by) that the shipped
    # reranker's hard negatives came from, before they were read from the scenes vocabulary.
    assert SWAP_GROUPS == (
        ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
        + ("gray", "cyan"),
        ("circle", "square", "triangle", "star", "heart", "diamond", "cross", "ring"),
        ("circles", "squares", "triangles", "stars", "hearts", "diamonds", "crosses", "rings"),
        ("two", "three", "four"),
        ("small", "large"),
        ("top", "bottom"),
        ("left", "right"),
        ("above", "below"),
    )
    captions = [sample_spec(scene_rng(0, i)).caption for i in range(400)]
    words = {word.rstrip(",") for caption in captions for word in caption.split()}
    assert {word for group in SWAP_GROUPS for word in group} <= words


def _colour_batch(names):
    images = torch.stack([torch.tensor(COLOURS[n]).view(3, 1, 1).expand(3, 16, 16) for n in names])
    return images.clone()


def test_reranker_learns_to_prefer_the_right_caption():
    torch.manual_seed(0)
    names = list(COLOURS)
    vocab = {name: i for i, name in enumerate(names)}
    config = RerankerConfig(text_vocab=8, text_len=2, image_size=16, dim=16, text_layers=1)
    model = Reranker(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    images = _colour_batch(names)

    def ids(words):  # a colour id, then a padding id
        return torch.tensor([[vocab[w], 7] for w in words])

    text = ids(names)
    negatives = ids(names[1:] + names[:1])  # each image's hard negative: the next colour
    has_negative = torch.tensor([True, True, False])
    out = model.loss(images, text, negatives, has_negative)
    assert torch.isfinite(out["loss"]) and 0 <= out["hard_accuracy"] <= 1
    for _ in range(60):
        out = model.loss(images, text, negatives, has_negative)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert out["accuracy"].item() == 1.0 and out["hard_accuracy"].item() == 1.0
    for name in names:
        image = _colour_batch([name] * 3)
        scores = model.score(image, ids(names))
        assert scores.argmax().item() == vocab[name]


def test_sampling_orders_candidates_by_the_reranker():
    bundle = tiny_bundle()
    bundle.config.reranker = RerankerConfig(
        text_vocab=bundle.tokenizer.padded_vocab_size,
        text_len=bundle.tokenizer.text_len,
        image_size=bundle.config.vae.image_size,
        dim=16,
        text_layers=1,
        image_width=8,
    )
    bundle.reranker = Reranker(bundle.config.reranker).eval()
    done = run(generate(bundle, "a red circle", SamplingOptions(n=4, seed=3)))
    assert sorted(done.order) == [0, 1, 2, 3]
    assert torch.all(done.scores[:-1] >= done.scores[1:])
    text = bundle.tokenizer.encode(["a red circle"]).expand(4, -1)
    again = bundle.reranker.score(done.images, text)
    assert torch.allclose(again, done.scores, atol=1e-5)
