"""The ECL tool's figures: entropy curves (paper Figure 2) and eigenvalue spectra (Figure 3)."""

from __future__ import annotations

from typing import Any

import torch

from entropyprune.figures import panels_figure, save


def plot_curves(result: dict[str, Any], path: str) -> None:
    """Figure 2: entropy per layer, one line per dataset with a +-1 std band, one panel per state."""
    states = result["states"]
    fig, axes = panels_figure(len(states))
    layers = list(range(result["num_layers"]))
    for ax, state in zip(axes, states, strict=True):
        for name, entry in result["datasets"].items():
            mean = torch.tensor(entry[state]["mean"])
            std = torch.tensor(entry[state]["std"])
            (line,) = ax.plot(layers, mean.tolist(), marker="o", markersize=3, linewidth=1.4,
                              label=f"{name} (n={entry['samples']})")
            ax.fill_between(layers, (mean - std).tolist(), (mean + std).tolist(), color=line.get_color(),
                            alpha=0.18, linewidth=0)
        k = result["collapse"][state]["layer"]
        if k is not None:
            # The collapse happens between layers K-1 and K; the line sits between them.
            ax.axvline(k - 0.5, color="0.3", linestyle="--", linewidth=1, label=f"collapse: K = {k}")
        ax.set_title(f"{state} states")
        ax.set_xlabel("layer (0-based)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("matrix entropy" + ("" if result["alpha"] == 1 else f" (order {result['alpha']:g})"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Visual-token matrix entropy: {result['model_name']}", fontsize=10)
    save(fig, path)


def plot_spectra(result: dict[str, Any], path: str) -> None:
    """Figure 3: the mean eigenvalue spectrum of the chosen layers, log scale, one panel per state."""
    states = result["states"]
    fig, axes = panels_figure(len(states))
    for ax, state in zip(axes, states, strict=True):
        for layer in result["spectra"]["layers"]:
            eig = [e for e in result["spectra"][state][str(layer)] if e > 0]  # zeros have no place on a log axis
            ax.plot(range(1, len(eig) + 1), eig, linewidth=1.4, label=f"L{layer}")
        ax.set_yscale("log")
        ax.set_title(f"{state} states")
        ax.set_xlabel("eigenvalue rank")
        ax.set_ylabel("eigenvalue (trace-normalised)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"Eigenvalue spectra (mean over samples): {result['model_name']}", fontsize=10)
    save(fig, path)
