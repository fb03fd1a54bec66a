"""Pictures of training: the loss curve from `losses.csv` (step,loss per line)."""

from __future__ import annotations

from pathlib import Path

from .files import atomic_path


def plot_loss_curve(csv_path: str | Path, png_path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [line.split(",") for line in Path(csv_path).read_text().splitlines() if line.strip()]
    steps = np.array([int(r[0]) for r in rows])
    losses = np.array([float(r[1]) for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, alpha=0.35, lw=1, label="loss")
    if len(losses) >= 10:  # a moving average makes the trend readable through the diffusion-loss noise
        k = max(5, len(losses) // 20)
        ax.plot(steps[k - 1 :], np.convolve(losses, np.ones(k) / k, mode="valid"), lw=2, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(png_path)
