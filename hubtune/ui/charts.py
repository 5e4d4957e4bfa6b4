"""The page's loss chart: a Vega-Lite spec written with Altair, which gradio's `gr.Plot` draws. Gradio's own
LinePlot has no point marks and no tick step, so one logged value drew nothing and the step axis read 0.5;
here every logged value is a point, steps are whole numbers, and each curve is named in the legend
("training loss", "held-out loss", rewards; prefixed with the run's name when runs are overlaid)."""

from __future__ import annotations

import altair as alt
import pandas as pd
from gradio.components.plot import AltairPlotData

from hubtune.ui.views import HELD_OUT_LOSS, TRAINING_LOSS

HEIGHT = 260  # the plot area; the legend goes below it, inside the component (the top padding clears the label)
# Gradio recolours a line chart's curves with the page's palette; these stand in until it does.
COLOURS = ["#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#ec4899", "#14b8a6", "#84cc16"]


def loss_chart(points: list[dict]) -> AltairPlotData | None:
    """The chart of views.loss_points rows ({step, loss, curve}); None when there is nothing to draw yet."""
    if not points:
        return None
    frame = pd.DataFrame(points, columns=["step", "loss", "curve"]).astype(
        {"step": "int64", "loss": "float64", "curve": "str"})
    curves = sorted(set(frame["curve"]), key=_order)
    losses_only = all(c.endswith((TRAINING_LOSS, HELD_OUT_LOSS)) for c in curves)
    last = int(frame["step"].max())
    line = alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(filled=True, size=45, strokeWidth=0)).encode(
        x=alt.X("step:Q", title="step", scale=alt.Scale(domain=[0, max(last, 1)], nice=False),
                axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("loss:Q", title="loss" if losses_only else "loss, reward, accuracy", scale=alt.Scale(zero=False)),
        color=alt.Color("curve:N", title="curve",
                        scale=alt.Scale(domain=curves, range=[COLOURS[i % len(COLOURS)] for i in range(len(curves))]),
                        legend=alt.Legend(orient="bottom", columns=2, labelLimit=400)),
        tooltip=[alt.Tooltip("curve:N"), alt.Tooltip("step:Q", format="d"), alt.Tooltip("loss:Q", format=".4f")],
    )
    # SVG (not canvas): the curve names are text a reader's tools, and the browser test, can find.
    spec = alt.layer(line).properties(height=HEIGHT, padding={"top": 34, "left": 8, "right": 16, "bottom": 8},
                                      usermeta={"embedOptions": {"renderer": "svg", "actions": False}})
    # As a "line" chart, gradio sizes it to its box (and again when the box changes, as a tab is shown) and
    # gives it the page's fonts and colours.
    return AltairPlotData(plot=spec.to_json(), chart="line")


def _order(curve: str) -> tuple:
    """Per run, training loss, then held-out loss, then the rewards by name."""
    run, _, name = curve.rpartition(": ")
    return run, name != TRAINING_LOSS, name != HELD_OUT_LOSS, name
