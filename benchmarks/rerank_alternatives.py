"""Which candidate to show first: the bundle's reranker, or the transformer's own likelihood?

For the eval's captions (same scenes, seeds and sampling as `dalle eval`), this draws the candidates
once and picks one of them five ways:
- first: the first one sampled.
- reranker: the bundle's contrastive reranker.
- cond: the highest log p(image | caption).
- pmi: the highest log p(image | caption) - log p(image | empty caption), the pointwise mutual
  information that guidance also uses.
- pmi+rr: the best sum of the pmi and reranker ranks.
- other: with ``--other B``, the reranker of bundle B (same tokenizer), on the same candidates.

It prints how often the pick is fully right and the mean fraction of its facts that are right
(a denser signal than "fully right" when few captions succeed).

    python benchmarks/rerank_alternatives.py [--bundle B] [--count 100] [--other B2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.bundle import default_bundle_path, load  # noqa: E402
from model.data import scenes  # noqa: E402
from model.evaluation.evaluate import EvalConfig, scene_batch, to_uint8  # noqa: E402
from model.inference.sampling import complete, run  # noqa: E402
from model.training.train import reranker_source  # noqa: E402


@torch.inference_mode()
def log_likelihood(transformer, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B,) summed log p of each row of image tokens (B, N) given captions (B, text_len)."""
    logits = transformer(transformer.stream(text, tokens)).image.float().log_softmax(-1)
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).sum(-1)


def facts_right(result: scenes.ScoreResult) -> float:
    oks = [check.ok for check in result.checks if check.ok is not None]
    return sum(oks) / len(oks) if oks else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(default_bundle_path()))
    parser.add_argument("--count", type=int, default=100, help="captions per split")
    parser.add_argument("--other", help="also pick with this bundle's reranker")
    args = parser.parse_args()
    bundle = load(args.bundle, "cpu")
    config = EvalConfig()
    transformer = bundle.transformer.eval()
    methods = ("first", "reranker", "cond", "pmi", "pmi+rr")
    other = None
    if args.other:
        try:
            source = reranker_source(args.other, bundle.tokenizer)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        other, methods = source.reranker.eval(), (*methods, "other")
    for split in ("seen", "heldout"):
        _, specs = scene_batch(split, args.count, bundle.config.vae.image_size, config.seed)
        right = {m: 0 for m in (*methods, "any")}
        facts = {m: 0.0 for m in methods}
        for i, spec in enumerate(specs):
            options = config.options(config.seed + i)
            done = run(
                complete(bundle, None, (0, 0), spec.caption, options, precision=config.precision)
            )
            results = [scenes.score(to_uint8(image), spec.stated) for image in done.images]
            tokens = done.tokens.flatten(1)
            n = len(tokens)
            cond = log_likelihood(
                transformer, bundle.tokenizer.encode([spec.caption]).expand(n, -1), tokens
            )
            pmi = cond - log_likelihood(transformer, bundle.tokenizer.empty(n), tokens)
            order = getattr(done, "order", None) or list(range(n))  # candidates are reranked
            pmi_rank = torch.empty(n)
            pmi_rank[pmi.argsort(descending=True)] = torch.arange(n, dtype=torch.float)
            chosen = {
                "first": order.index(0),
                "reranker": 0,
                "cond": int(cond.argmax()),
                "pmi": int(pmi.argmax()),
                "pmi+rr": int((torch.arange(n) + pmi_rank).argmin()),
            }
            if other is not None:
                captions = bundle.tokenizer.encode([spec.caption]).expand(n, -1)
                chosen["other"] = int(other.score(done.images, captions).argmax())
            for method, index in chosen.items():
                right[method] += results[index].correct
                facts[method] += facts_right(results[index])
            right["any"] += any(r.correct for r in results)
        print(
            f"{split}: fully right  " + "  ".join(f"{m} {right[m] / len(specs):.1%}" for m in right)
        )
        print(
            f"{split}: facts right  " + "  ".join(f"{m} {facts[m] / len(specs):.1%}" for m in facts)
        )


if __name__ == "__main__":
    main()
