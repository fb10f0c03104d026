"""Lookahead: how well a sampled region fits the kept cells a left-to-right model never saw.

A region that does not reach the bottom-right corner is followed, in raster order, by kept
cells: right of it in its rows, left of it in its lower rows, every row below it
(``Plan.following_cells``). The sampler forces them to the picture's own tokens but cannot
look ahead at them while it samples; once a candidate is sampled, the model's log-likelihood of
those cells given everything before them (conditioned on the caption, no guidance) says how
well the candidate leads into the picture that follows. One forward pass over every
candidate's whole token sequence gives it (no cache: each position attends over its own
prefix, exactly as the sampler's calls did).

Every family's model answers it through the sampler's interface: ``transformer.stream`` and
``transformer(ids, 0, None).image`` (per image slot, the logits of the cell it predicts), for
the studio's transformer, ruDALL-E's layout and DALL·E Mini/Mega's BART decoder alike.
"""

from __future__ import annotations

import torch

from model.geometry import Plan
from model.networks.precision import model_device

# candidates scored per forward pass: the image logits of a chunk are chunk x cells x vocab
CHUNK = 8


@torch.inference_mode()
def lookahead_scores(
    transformer, text: torch.Tensor, tokens: torch.Tensor, plan: Plan, chunk: int = CHUNK
) -> torch.Tensor:
    """(n,) float32: per candidate, the sum over ``plan.following_cells`` of the model's log
    probability of the cell's token given the caption ``text`` (text_len,) and every cell
    before it; ``tokens`` (n, grid, grid) are the candidates' whole grids. 0 for a region with
    no kept cell after it. The candidates run ``chunk`` at a time (one call each)."""
    cfg = transformer.config
    n = tokens.shape[0]
    if tuple(tokens.shape[1:]) != (cfg.grid, cfg.grid):
        raise ValueError(
            f"candidate tokens must be n x {cfg.grid} x {cfg.grid}, got {tuple(tokens.shape)}"
        )
    cells = plan.following_cells
    if not cells:
        return torch.zeros(n)
    device = model_device(transformer)
    index = torch.tensor(cells, device=device)
    end = cfg.text_len + max(cells) + 1  # the last slot read predicts the last kept cell
    scores = []
    for first in range(0, n, chunk):
        flat = tokens[first : first + chunk].reshape(-1, cfg.grid * cfg.grid).to(device)
        stream = transformer.stream(text.to(device).expand(flat.shape[0], -1), flat)
        logits = transformer(stream[:, :end], 0, None).image  # (b, max(cells) + 1, V)
        logp = logits[:, index].float().log_softmax(dim=-1)  # (b, cells, V)
        picked = logp.gather(-1, flat[:, index].unsqueeze(-1)).squeeze(-1)
        scores.append(picked.sum(dim=1).cpu())
    return torch.cat(scores)


def memory_needed(config, rows: int, chunk: int = CHUNK) -> int:
    """Bytes one lookahead call holds beside the model (``config``: a ``BundleConfig``): a
    chunk's fp32 image logits and a few activations of its whole sequence."""
    tf = config.transformer
    batch = min(rows, chunk)
    return batch * tf.seq_len * (2 * tf.image_vocab + 8 * tf.dim) * 4
