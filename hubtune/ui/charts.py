"""The page's loss chart: a Vega-Lite spec written with Altair, which gradio's `gr.Plot` draws. Gradio's own
LinePlot has no point marks and no tick step, so one logged value drew nothing and the step axis read 0.5;
here every logged value is a point, steps are whole numbers, and each curve is named in the legend
("training loss", "held-out loss", rewards; prefixed with the run's name when runs are overlaid)."""

from __future__ import annotations

import altair as alt
import pandas as pd

from hubtune.ui.views import HELD_OUT_LOSS, TRAINING_LOSS

HEIGHT = 260  # the plot area; the legend goes below it, inside the component
GRID = "#e5e7eb"


def loss_chart(points: list[dict]) -> alt.Chart | None:
    """The chart of views.loss_points rows ({step, loss, curve}); None when there is nothing to draw yet."""
    if not points:
        return None
    frame = pd.DataFrame(points, columns=["step", "loss", "curve"]).astype(
        {"step": "int64", "loss": "float64", "curve": "str"})
    curves = sorted(set(frame["curve"]), key=_order)
    losses_only = all(c.endswith((TRAINING_LOSS, HELD_OUT_LOSS)) for c in curves)
    last = int(frame["step"].max())
    chart = alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(filled=True, size=45)).encode(
        x=alt.X("step:Q", title="step", scale=alt.Scale(domain=[0, max(last, 1)], nice=False),
                axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("loss:Q", title="loss" if losses_only else "loss, reward, accuracy", scale=alt.Scale(zero=False)),
        color=alt.Color("curve:N", title="curve", scale=alt.Scale(domain=curves),
                        legend=alt.Legend(orient="bottom", columns=2, labelLimit=400)),
        tooltip=[alt.Tooltip("curve:N"), alt.Tooltip("step:Q", format="d"), alt.Tooltip("loss:Q", format=".4f")],
    )
    # SVG (not canvas): the curve names are text a reader's tools, and the browser test, can find.
    return chart.properties(width="container", height=HEIGHT,
                            usermeta={"embedOptions": {"renderer": "svg", "actions": False}}).configure_axis(
        gridColor=GRID, domainColor="#9ca3af", tickColor="#9ca3af", labelFontSize=12, titleFontSize=12).configure_legend(
        labelFontSize=13, titleFontSize=12).configure_view(stroke=None)


def _order(curve: str) -> tuple:
    """Per run, training loss, then held-out loss, then the rewards by name."""
    run, _, name = curve.rpartition(": ")
    return run, name != TRAINING_LOSS, name != HELD_OUT_LOSS, name

