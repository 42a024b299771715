"""Figure set-up shared by the report and the ECL tool: matplotlib's object API on the Agg canvas.

No pyplot state and no display are needed, so figures render the same in tests, on servers and in CI.
"""

from __future__ import annotations

PANEL_SIZE = (5.0, 3.6)  # inches per panel
DPI = 100


def figure_size_px(panels: int) -> tuple[int, int]:
    """Pixel size (width, height) of a figure with ``panels`` panels side by side."""
    return round(PANEL_SIZE[0] * panels * DPI), round(PANEL_SIZE[1] * DPI)


def panels_figure(panels: int):
    """A figure with ``panels`` axes in one row: ``(figure, [axes, ...])``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PANEL_SIZE[0] * panels, PANEL_SIZE[1]), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def polar_figure(size: tuple[float, float] = (6.0, 5.0)):
    """A figure with one polar axes (the radar chart): ``(figure, axes)``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(projection="polar")


def save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
