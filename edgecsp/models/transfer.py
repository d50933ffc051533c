"""Weight transfer between two builds of one architecture (e.g. another class count)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def load_all_but(source: nn.Module, target: nn.Module, fresh: Iterable[nn.Module]) -> bool:
    """Copy every weight of ``source`` into ``target`` except those of the ``fresh`` modules (of
    ``source``; ``target`` keeps its own there, e.g. prediction convs for new classes). False when
    anything else fails to line up."""
    skip = {id(m) for m in fresh}
    prefixes = tuple(f"{n}." for n, m in source.named_modules() if id(m) in skip)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(prefixes)}
    missing, unexpected = target.load_state_dict(state, strict=False)
    return not unexpected and all(k.startswith(prefixes) for k in missing)
