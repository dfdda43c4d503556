"""Draw the documentation's bank geometry figure (docs/assets/bank_geometry.svg) from the library's own
masks: one small weight pruned unstructured, bank-balanced with a tail bank, and 2:4.

    python scripts/bank_figure.py            # rewrites docs/assets/bank_geometry.svg
    python scripts/bank_figure.py --out x.svg

Needs matplotlib (extra ``plots``). The SVG is written without a date and with a fixed id salt, so
running it again gives the same file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pruning_tools.masks import bank_mask, unstructured_mask  # noqa: E402

ROWS, COLUMNS = 4, 20  # a Linear weight [out=4, in=20]: 4 rows of 20 input weights
OUT = Path(__file__).resolve().parents[1] / "docs" / "assets" / "bank_geometry.svg"


def panels(w: torch.Tensor) -> list[tuple[str, torch.Tensor, int]]:
    """``(title, keep-mask [ROWS, COLUMNS], bank size drawn or 0)`` of each panel."""
    return [
        ("unstructured, 75 %: the 20 largest |w| of the tensor, anywhere", unstructured_mask(w, None, 0.75), 0),
        ("bank-balanced, bank 8, 75 %: 2 of 8 per bank, 1 of 4 in the tail bank", bank_mask(w, None, 0.75, 8), 8),
        ("2:4 (bank 4, 50 %): 2 of every 4", bank_mask(w, None, 0.5, 4), 4),
    ]


def draw(out: Path) -> None:
    plt.rcParams["svg.hashsalt"] = "bank-geometry"  # stable element ids
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: a smaller file
    torch.manual_seed(3)
    w = torch.randn(ROWS, COLUMNS)
    magnitude = (w.abs() / w.abs().max()).numpy()
    figure, axes = plt.subplots(3, 1, figsize=(8.0, 5.6))
    for ax, (title, keep, bank) in zip(axes, panels(w)):
        for r in range(ROWS):
            for c in range(COLUMNS):
                kept = bool(keep[r, c])
                colour = plt.cm.Blues(0.35 + 0.65 * magnitude[r, c]) if kept else "white"
                ax.add_patch(plt.Rectangle((c, r), 1, 1, facecolor=colour, edgecolor="#bbbbbb", linewidth=0.6))
        for edge in range(bank, COLUMNS, bank) if bank else ():
            ax.axvline(edge, color="#d62728", linewidth=2.0)
        ax.set_xlim(0, COLUMNS)
        ax.set_ylim(ROWS, 0)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9, loc="left")
    caption = "input dim (a row of the weight; banks run along it)   blue: kept, darker = larger |w|"
    axes[-1].set_xlabel(caption, fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="svg", metadata={"Date": None})
    plt.close(figure)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="SVG file to write (default: %(default)s)")
    draw(parser.parse_args().out)


if __name__ == "__main__":
    main()
