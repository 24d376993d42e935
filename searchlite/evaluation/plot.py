"""Optional PNG plot of recall@k curves (needs matplotlib: pip install 'searchlite[plot]')."""

from __future__ import annotations

from pathlib import Path

from searchlite.errors import SearchliteError


def plot_recall(result: dict, path: Path) -> None:
    """Recall@k per model and rerank pair, text->image and image->text side by side."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SearchliteError("--plot needs matplotlib: pip install matplotlib") from exc
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    series = list(result["models"].items()) + [(f"rerank {p}", v) for p, v in result["rerank"].items()]
    directions = ("text_to_image", "image_to_text") if any("text_to_image" in v for _, v in series) else (
        "image_to_image",)
    for ax, direction in zip(axes, directions):
        for name, v in series:
            m = v[direction]
            ks = sorted(int(k.split("@")[1]) for k in m if k.startswith("recall@"))
            ax.plot(ks, [m[f"recall@{k}"] for k in ks], marker="o", label=name)
        ax.set_title(direction.replace("_", " "))
        ax.set_xlabel("k")
        ax.set_ylabel("recall@k")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
