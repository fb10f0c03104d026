"""How to sample a completion: ``SamplingOptions`` and its bounds, shared by the CLI, the server and
the studio."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Sampling options' bounds: logits divided by MIN_TEMPERATURE stay far from fp32's overflow; a
# guidance scale beyond MAX_GUIDANCE only saturates (DALL·E Mega samples at 10-16); a seed is
# what torch.Generator.manual_seed takes.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0
MAX_GUIDANCE = 100.0
MAX_SEED = 2**64 - 1


class OptionError(ValueError):
    """A sampling option out of its range: the message, and the option's ``field`` (its name in
    ``SamplingOptions``, which the server's API uses too) for a caller that must say which."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass
class SamplingOptions:
    """How to sample a completion; every field is exposed in the CLI and the studio."""

    n: int = 1  # candidates, sampled in one batch
    temperature: float = 1.0  # the paper samples at 1
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    guidance: float = 1.0  # classifier-free guidance scale; 1 = conditional only
    seed: int | None = None  # None = fresh randomness

    @staticmethod
    def add_arguments(parser, skip: tuple[str, ...] = ()) -> None:
        """The CLI flags for every field (``--n --seed --temperature --top-k --top-p
        --guidance``), their defaults this class's. ``skip`` leaves out the flags of those
        fields (``dalle eval`` has its own ``--samples`` and a ``--seed`` for its scenes)."""
        if "n" not in skip:
            parser.add_argument("--n", type=int, default=1, help="candidates, sampled in one batch")
        if "seed" not in skip:
            parser.add_argument(
                "--seed", type=int, default=None, help="fixed seed (default: random)"
            )
        parser.add_argument("--temperature", type=float, default=1.0)
        parser.add_argument("--top-k", type=int, default=0, help="0 = off")
        parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
        parser.add_argument(
            "--guidance", type=float, default=1.0, help="classifier-free guidance scale"
        )

    @classmethod
    def from_args(cls, args, *, validate: bool = True, **changes: Any) -> SamplingOptions:
        """The options ``add_arguments``' flags parsed into ``args`` (``changes`` override, and
        stand for skipped flags), validated (ValueError naming the field) unless ``validate`` is
        False: a holder that checks its own fields first validates them later."""
        values = {
            f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in changes
        }
        options = cls(**{**values, **changes})
        if validate:
            options.validate()
        return options

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (a project's history entry, a bundle card, a server reply)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> SamplingOptions:
        """Options read from a file: unknown keys refused, each field's type and range checked
        (ValueError naming the field)."""
        if not isinstance(values, dict):
            raise ValueError(f"sampling options must be a JSON object, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown sampling option(s): {', '.join(map(str, unknown))}")
        types = {"n": int, "top_k": int, "temperature": float, "top_p": float, "guidance": float}
        for name, kind in types.items():
            value = values.get(name, getattr(cls, name))
            ok = isinstance(value, int | float) if kind is float else isinstance(value, int)
            if isinstance(value, bool) or not ok:
                raise ValueError(f"sampling option {name} must be a number, got {value!r}")
        seed = values.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"sampling option seed must be an integer or null, got {seed!r}")
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        """OptionError (a ValueError) naming the first field out of its range."""
        if self.n <= 0:
            raise OptionError("n", f"number of candidates must be at least 1, got {self.n}")
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:  # also refuses NaN
            raise OptionError(
                "temperature",
                f"temperature must be from {MIN_TEMPERATURE} to {MAX_TEMPERATURE}, "
                f"got {self.temperature}",
            )
        if self.top_k < 0:
            raise OptionError("top_k", f"top-k must be 0 (off) or positive, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise OptionError("top_p", f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.guidance <= MAX_GUIDANCE:
            raise OptionError(
                "guidance",
                f"guidance scale must be from 0 to {MAX_GUIDANCE}, got {self.guidance}",
            )
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise OptionError("seed", f"seed must be from 0 to 2**64 - 1, got {self.seed}")
