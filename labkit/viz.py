"""One plotly theme and the handful of figure helpers the chapters share.

Every figure in the book goes through here so that it (1) looks the same everywhere and (2) survives in
the static HTML: the renderer is set to ``plotly_mimetype+notebook`` so jupyter-book embeds the figure.
Interactivity that must work without a kernel uses plotly sliders/frames, never ipywidgets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

THEME = "engram"
PALETTE = ["#3b6ea8", "#d1603d", "#4f9a6b", "#8a5aa8", "#c9a227", "#5d6d7e", "#c0392b", "#17a2b8"]


def use_theme() -> None:
    """Register the Engram template, make it the default and pick a static-HTML-safe renderer."""
    if THEME not in pio.templates:
        template = go.layout.Template(pio.templates["plotly_white"])
        template.layout.colorway = PALETTE
        template.layout.font = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)
        template.layout.margin = dict(l=60, r=20, t=50, b=50)
        template.layout.legend = dict(bgcolor="rgba(255,255,255,0.6)")
        template.layout.hovermode = "x unified"
        pio.templates[THEME] = template
    pio.templates.default = THEME
    pio.renderers.default = "plotly_mimetype+notebook"


def _as_2d(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (seeds, points), got shape {array.shape}")
    return array


def line_band(
    x: Sequence[float] | None,
    curves: Mapping[str, np.ndarray],
    title: str = "",
    xaxis: str = "",
    yaxis: str = "",
    log_x: bool = False,
    log_y: bool = False,
) -> go.Figure:
    """Mean line with a ±1 std band for each named curve.

    curves: name -> array (seeds, len(x)) or (len(x),). One seed draws a plain line. A curve with x values
    of its own (e.g. state sizes that differ per model) is given as a tuple ``(x_curve, values)``; ``x`` may
    then be None.
    """
    fig = go.Figure()
    for i, (name, values) in enumerate(curves.items()):
        if isinstance(values, tuple):
            x_curve, values = np.asarray(values[0], dtype=float), values[1]
        elif x is None:
            raise ValueError(f"x is None, so curves[{name!r}] must be a tuple (x_curve, values)")
        else:
            x_curve = np.asarray(x, dtype=float)
        y = _as_2d(f"curves[{name!r}]", values)
        if y.shape[1] != len(x_curve):
            raise ValueError(f"curves[{name!r}] must have {len(x_curve)} points per seed, got {y.shape[1]}")
        color = PALETTE[i % len(PALETTE)]
        mean, std = y.mean(0), y.std(0)
        if y.shape[0] > 1:
            fig.add_trace(go.Scatter(
                x=np.concatenate([x_curve, x_curve[::-1]]), y=np.concatenate([mean + std, (mean - std)[::-1]]),
                mode="lines", fill="toself", fillcolor=_rgba(color, 0.18), line=dict(width=0),
                hoverinfo="skip", showlegend=False, legendgroup=name,
            ))
        fig.add_trace(go.Scatter(x=x_curve, y=mean, mode="lines+markers", name=name, legendgroup=name,
                                 line=dict(color=color, width=2), marker=dict(size=5)))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis)
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def heatmap(
    z: np.ndarray,
    title: str = "",
    x: Sequence | None = None,
    y: Sequence | None = None,
    xaxis: str = "",
    yaxis: str = "",
    colorscale: str = "RdBu",
    zmid: float | None = 0.0,
) -> go.Figure:
    """Heatmap of a 2-D array ``z: (rows, cols)``; diverging around ``zmid`` by default."""
    z = np.asarray(z, dtype=float)
    if z.ndim != 2:
        raise ValueError(f"z must be 2-D, got shape {z.shape}")
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, colorscale=colorscale, zmid=zmid))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis, hovermode="closest")
    fig.update_yaxes(autorange="reversed")
    return fig


def raster(spikes: np.ndarray, dt: float = 1.0, title: str = "", yaxis: str = "neuron") -> go.Figure:
    """Spike raster of a boolean array ``spikes: (time, neurons)``; one dot per spike."""
    spikes = np.asarray(spikes)
    if spikes.ndim != 2:
        raise ValueError(f"spikes must be 2-D (time, neurons), got shape {spikes.shape}")
    t, n = np.nonzero(spikes)
    fig = go.Figure(go.Scattergl(x=t * dt, y=n, mode="markers", marker=dict(size=3, color=PALETTE[0])))
    fig.update_layout(title=title, xaxis_title="time", yaxis_title=yaxis, hovermode="closest")
    return fig


def bench_bar(
    results: Sequence[Mapping],
    value: str = "ms",
    group: str = "case",
    color: str = "backend",
    title: str = "",
    log_y: bool = True,
) -> go.Figure:
    """Grouped bars from benchmark records, e.g. ``[{"case": "T=8192", "backend": "numba", "ms": 1.2}]``."""
    if not results:
        raise ValueError("results must hold at least one benchmark record")
    fig = go.Figure()
    groups = list(dict.fromkeys(r[group] for r in results))
    for i, name in enumerate(dict.fromkeys(r[color] for r in results)):
        rows = {r[group]: r[value] for r in results if r[color] == name}
        fig.add_trace(go.Bar(name=str(name), x=groups, y=[rows.get(g) for g in groups],
                             marker_color=PALETTE[i % len(PALETTE)]))
    fig.update_layout(barmode="group", title=title, yaxis_title=value, hovermode="closest")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def slider_lines(
    x: Sequence[float],
    frames: Mapping[str, Mapping[str, Sequence[float]]],
    title: str = "",
    xaxis: str = "",
    yaxis: str = "",
    slider_label: str = "",
) -> go.Figure:
    """Lines whose data change with a slider, without a kernel (works in the static book).

    frames: slider step label -> {curve name -> y values over x}. Every step must name the same curves.
    """
    if not frames:
        raise ValueError("frames must hold at least one slider step")
    x = list(x)
    steps = list(frames)
    names = list(frames[steps[0]])
    for step in steps:
        if list(frames[step]) != names:
            raise ValueError(f"frames[{step!r}] must name the curves {names}, got {list(frames[step])}")
    fig = go.Figure()
    for i, name in enumerate(names):
        fig.add_trace(go.Scatter(x=x, y=list(frames[steps[0]][name]), mode="lines+markers", name=name,
                                 line=dict(color=PALETTE[i % len(PALETTE)])))
    slider_steps = [
        dict(method="restyle", label=str(step), args=[{"y": [list(frames[step][n]) for n in names]}])
        for step in steps
    ]
    fig.update_layout(
        title=title, xaxis_title=xaxis, yaxis_title=yaxis,
        sliders=[dict(active=0, steps=slider_steps, currentvalue=dict(prefix=f"{slider_label} = "))],
    )
    return fig


def table(rows: Sequence[Mapping], title: str = "") -> go.Figure:
    """A small plotly table (for results that read better as a grid than a plot)."""
    if not rows:
        raise ValueError("rows must hold at least one record")
    columns = list(rows[0])
    fig = go.Figure(go.Table(header=dict(values=columns, align="left"),
                             cells=dict(values=[[r.get(c) for r in rows] for c in columns], align="left")))
    fig.update_layout(title=title)
    return fig


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def reference_line(
    fig: go.Figure, x: Sequence[float], y: Sequence[float], name: str, color: str | None = None,
    dash: str = "dash",
) -> go.Figure:
    """Add a theory/prediction curve to ``fig``: a dashed line without markers. Returns ``fig``.

    color defaults to the dark grey of the palette so measured curves keep the bright colours.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got shapes {x.shape} and {y.shape}")
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name,
                             line=dict(color=color or PALETTE[5], width=2, dash=dash)))
    return fig
