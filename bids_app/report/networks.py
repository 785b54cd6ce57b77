"""Which network a region belongs to, and the region order that groups networks.

A ``network`` column of the atlas lookup table wins (the built-in coordinate sets have
one); otherwise the network is read from region names that carry one:

* Schaefer 2018: ``17Networks_LH_VisCent_ExStr_1`` -> ``VisCent``, ``7Networks_RH_Default_3``
  -> ``Default``;
* hemisphere-first names: ``LH_Net1_1`` / ``RH_DorsAttn_Post_2`` -> ``Net1`` / ``DorsAttn``.

Names such as Harvard-Oxford's ``Left_Frontal_Pole`` carry no network: the order is
then the atlas order. Networks come in the order they first appear in the atlas;
within a network regions keep the atlas order (so left before right for Schaefer).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_SCHAEFER = re.compile(r"^\d+Networks_(?:LH|RH)_([A-Za-z]+)")
_HEMI_FIRST = re.compile(r"^(?:LH|RH)_([A-Za-z][A-Za-z0-9]*?)(?:_.*)?$")
OTHER = "other"


def network_of(name: str) -> str | None:
    """The network a region name carries, or None."""
    for pattern in (_SCHAEFER, _HEMI_FIRST):
        m = pattern.match(str(name))
        if m:
            return m.group(1)
    return None


@dataclass
class Ordering:
    """A display order of an atlas's regions.

    Attributes
    ----------
    order
        Region positions in display order.
    networks
        Network of each region in display order (None when the atlas has none).
    blocks
        ``(start, stop, network)`` of consecutive display positions per network.
    """

    order: np.ndarray
    networks: list[str] | None = None
    blocks: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def has_networks(self) -> bool:
        return self.networks is not None


def region_networks(names: Sequence[str], lut_networks: Sequence | None = None) -> list[str] | None:
    """One network label per region, or None when neither the table nor the names give one.

    At least half the regions must have a network and there must be at least two
    networks; the others are put in ``other``.
    """
    labels: list[str | None]
    if lut_networks is not None and len(lut_networks) == len(names):
        labels = [None if _missing(v) else str(v) for v in lut_networks]
    else:
        labels = [network_of(n) for n in names]
    known = [v for v in labels if v is not None]
    if len(names) < 4 or len(known) * 2 < len(names) or len(set(known)) < 2:
        return None
    return [OTHER if v is None else v for v in labels]


def _missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    return str(value).strip() in ("", "n/a", "nan")


def ordering(names: Sequence[str], lut_networks: Sequence | None = None) -> Ordering:
    """Regions grouped by network (first-appearance order), atlas order inside a network."""
    nets = region_networks(names, lut_networks)
    if nets is None:
        return Ordering(order=np.arange(len(names)))
    rank: dict[str, int] = {}
    for label in nets:
        if label != OTHER:
            rank.setdefault(label, len(rank))
    rank[OTHER] = len(rank)
    keys = np.array([rank[label] for label in nets])
    order = np.argsort(keys, kind="stable")
    shown = [nets[i] for i in order]
    blocks: list[tuple[int, int, str]] = []
    start = 0
    for i in range(1, len(shown) + 1):
        if i == len(shown) or shown[i] != shown[start]:
            blocks.append((start, i, shown[start]))
            start = i
    return Ordering(order=order, networks=shown, blocks=blocks)


def lut_network_column(lut, names: Sequence[str]) -> list | None:
    """The lookup table's ``network`` values in the order of ``names`` (None without one)."""
    if lut is None or "network" not in getattr(lut, "columns", ()):
        return None
    by_name = {str(n): v for n, v in zip(lut["name"], lut["network"], strict=True)}
    if any(str(n) not in by_name for n in names):
        return None
    return [by_name[str(n)] for n in names]


__all__ = ["OTHER", "Ordering", "lut_network_column", "network_of", "ordering", "region_networks"]
