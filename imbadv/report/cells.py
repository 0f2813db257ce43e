"""The attacked combinations the study reports (section 4, Table 1), defined once.

A cell is a target model's sampling and whose gradient crafts the attack: the model itself
(white-box) or the balanced model (black-box). Table 1, the figures and the tables beyond the paper
all read their columns from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from imbadv.tracking.names import CLEAN_ACC, REL_DROP, SUCCESS_RATE

SAMPLING_ORDER = ("balanced", "under", "over")


@dataclass(frozen=True)
class Cell:
    sampling: str  # of the attacked model: balanced, under, over
    source: str  # of the gradient: self (white-box) or balanced (black-box)

    @property
    def whitebox(self) -> bool:
        return self.source == "self"

    @property
    def box(self) -> str:
        return "whitebox" if self.whitebox else "blackbox"

    @property
    def column(self) -> str:
        """Table 1's column name, as in the paper's table: `whitebox_undersample`, `blackbox_oversample`..."""
        return f"{self.box}_{self.sampling}" + ("" if self.sampling == "balanced" else "sample")

    @property
    def short(self) -> str:
        """`whitebox_under`, `blackbox_over`, ...: the suffix of the columns beyond the paper."""
        return f"{self.box}_{self.sampling}"

    @property
    def label(self) -> str:
        """`under, white-box`: a figure's legend."""
        return f"{self.sampling}, {'white' if self.whitebox else 'black'}-box"


# Reading order: the white-box attacks, then the black-box ones.
CELLS = (Cell("balanced", "self"), Cell("under", "self"), Cell("over", "self"),
         Cell("under", "balanced"), Cell("over", "balanced"))
# Table 1's column order: black-box first, as in the paper.
TABLE1_CELLS = tuple(sorted(CELLS, key=lambda c: (c.whitebox, SAMPLING_ORDER.index(c.sampling))))
WHITEBOX_CELLS = tuple(c for c in CELLS if c.whitebox)

# The measures beyond the paper that separate vulnerability from accuracy: (column, cell, metric).
BEYOND = (
    *((f"clean_{c.sampling}", c, CLEAN_ACC) for c in WHITEBOX_CELLS),
    *((f"success_{c.short}", c, SUCCESS_RATE) for c in CELLS),
    *((f"drop_{c.short}", c, REL_DROP) for c in WHITEBOX_CELLS if c.sampling != "balanced"),
)
