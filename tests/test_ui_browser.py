"""The whole loop in a real browser: Debian's Chromium, headless, driven by Playwright.

The embedded demo, a short run: check the data, start training, reload while it runs and see the page
reattach, stop (checkpoint) and resume to the end with the loss chart gaining points, open the run in
the history, ask the tuned adapter in chat, see the card preview and publish to the loopback Hub, then
merge it into its base on the Export tab and download the merged weights.
Screenshots land in test-artifacts/ui/ (artifacts); HUBTUNE_UPDATE_SCREENSHOTS=1 also refreshes the
README's copies in docs/screenshots/.
"""

from __future__ import annotations

import pytest

import json
import os
import re
import shutil
import time
from pathlib import Path

from playwright.sync_api import Page, expect

from conftest import HUB_TOKEN, HUB_USER
from hubtune.runs import RunFolder
from hubtune.ui import views

pytestmark = pytest.mark.browser  # Chromium through the whole app: make test-fast leaves it out

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "ui"  # not test-results/, which pytest-playwright empties at each session
README_SHOTS = ROOT / "docs" / "screenshots"
MAX_STEPS = 30
LONG = 420_000  # ms: a training subprocess on a busy 2-core machine


def log(started: float, what: str) -> None:
    print(f"[{time.time() - started:5.0f} s] {what}", flush=True)


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if os.environ.get("HUBTUNE_UPDATE_SCREENSHOTS") == "1":
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ARTIFACTS / f"{name}.png", README_SHOTS / f"{name}.png")


def sign_in(page: Page) -> None:
    """Locally the token is typed (it stays in the server's session for this page, never in the page)."""
    # The page has loaded and checked for a login (slow on a busy machine: the first load imports a lot).
    expect(page.get_by_text("Not signed in")).to_be_visible(timeout=60_000)
    page.get_by_label("Hugging Face token").fill(HUB_TOKEN)
    page.get_by_label("Hugging Face token").press("Enter")
    expect(page.get_by_text(f"Signed in as {HUB_USER}")).to_be_visible(timeout=60_000)


def tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def pick(page: Page, dropdown: str, option: str) -> None:
    page.locator(f"#{dropdown} input").click()
    page.get_by_role("option", name=re.compile(re.escape(option))).first.click()


def points(page: Page) -> int:
    text = page.locator("#chart-caption").inner_text()
    found = re.search(r"(\d+) training-loss points", text)
    return int(found.group(1)) if found else 0


def gigabytes(estimate: str) -> float:
    return float(re.search(r"about ([\d.]+) GB peak", estimate).group(1))


def line_colours(page: Page, chart: str) -> set[str]:
    """The stroke colours of the curves the chart has drawn (its line marks: not the grid, axes or points)."""
    strokes = page.eval_on_selector_all(f"#{chart} g.mark-line path", "els => els.map(e => e.getAttribute('stroke'))")
    return {s for s in strokes if s and s != "transparent"}


def eventually(page: Page, read, until, timeout_s: float = 15.0):
    """What `read()` gives once `until` holds of it (polled every 0.2 s, as the chart redraws when new points
    arrive), or its last reading after timeout_s."""
    deadline = time.time() + timeout_s
    value = read()
    while not until(value) and time.time() < deadline:
        page.wait_for_timeout(200)
        value = read()
    return value


def step_ticks(page: Page, chart: str) -> list[str]:
    """The labels the chart writes under its step (x) axis."""
    return page.eval_on_selector_all(
        f"#{chart} g.role-axis", "gs => gs.filter(g => (g.getAttribute('aria-label') || '').startsWith('X-axis'))"
        ".flatMap(g => [...g.querySelectorAll('.role-axis-label text')].map(t => t.textContent))")


def edit_config(page: Page, replacements: dict[str, str], steps: int = MAX_STEPS) -> str:
    """Change settings in the advanced editor (the generated YAML), as a user would; the fold is closed
    again after. Returns the text the editor showed."""
    page.get_by_text("Advanced: every setting").click()
    editor = page.locator("#config .cm-content")
    expect(editor).to_be_visible()
    # CodeMirror renders only the lines in view: a tall window shows them all.
    page.set_viewport_size({"width": 1280, "height": 6000})
    expect(editor).to_contain_text(f"max_steps: {steps}")
    text = editor.inner_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(text)
    for new in replacements.values():
        expect(editor).to_contain_text(new)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_text("Advanced: every setting").click()
    return text


def test_demo_loop_in_the_browser(ui_app, hub, page: Page):
    started = time.time()
    page.set_default_timeout(60_000)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(ui_app.local_url)

    # Sign in with a token, then check the embedded demo's model and data.
    sign_in(page)
    page.get_by_role("button", name="Check model and data").click()
    expect(page.locator("#data-format")).to_contain_text("format alpaca", timeout=120_000)
    expect(page.locator("#licence")).to_contain_text("Licence verdict: allow")
    expect(page.locator("#data-report")).to_contain_text("for training")
    shot(page, "data")

    # Train: a short run of the demo (fewer steps, logging every step, a small held-out set).
    tab(page, "2. Train")
    page.locator("#max-steps input").fill(str(MAX_STEPS))
    page.locator("#max-steps input").press("Tab")
    edit_config(page, {"logging_steps: 5": "logging_steps: 1", "eval_steps: 20": "eval_steps: 10",
                       "val_set_size: 0.05": "val_set_size: 16", "micro_batch_size: 8": "micro_batch_size: 4"})
    page.locator("#start").click()
    expect(page.locator("#train-message")).to_contain_text("Queued")
    log(started, "training queued")
    run_name = re.search(r"tiny-llama-[\d-]+", page.locator("#train-message").inner_text()).group(0)
    expect(page.locator("#progress")).to_contain_text(run_name)

    # A reload (a closed tab, another browser) reattaches to the job, which never depended on the page.
    page.reload()
    sign_in(page)
    tab(page, "2. Train")
    expect(page.locator("#progress")).to_contain_text(run_name)
    expect(page.locator("#progress")).to_contain_text(re.compile(r"queued|running"))
    expect(page.locator("#progress")).to_contain_text(re.compile(r"step [1-9]\d*/"), timeout=LONG)
    assert points(page) >= 1
    log(started, "reattached, training")

    # Stop: the step finishes, a checkpoint is saved, the process exits; the page says so in its words.
    page.locator("#stop").click()
    expect(page.locator("#progress")).to_contain_text("interrupted", timeout=LONG)
    expect(page.locator("#progress")).to_contain_text("(you pressed Stop). Resume continues from the last checkpoint.")
    expect(page.locator("#log textarea")).to_have_value(re.compile(r"Stopped at step \d+ \(you pressed Stop\)"))
    assert "SIGTERM" not in page.locator("#log textarea").input_value()
    stopped_at = points(page)
    log(started, f"stopped after {stopped_at} points")
    run = ui_app.root / run_name
    assert any((run / "checkpoints").glob("checkpoint-*")), "stopping saved no checkpoint"

    # Resume from the checkpoint to the end; the chart gains the remaining points.
    page.locator("#resume").click()
    expect(page.locator("#train-message")).to_contain_text("Resuming")
    expect(page.locator("#progress")).to_contain_text(f"finished · step {MAX_STEPS}/{MAX_STEPS}", timeout=LONG)
    expect(page.locator("#chart-caption")).to_contain_text(f"{MAX_STEPS} training-loss points")
    assert points(page) > stopped_at
    losses = [m["loss"] for m in RunFolder(run).metrics() if "loss" in m]
    assert min(losses[-5:]) < losses[0], f"loss did not fall: {losses}"
    log(started, "resumed run finished")
    page.locator("#loss-chart").scroll_into_view_if_needed()
    colours = eventually(page, lambda: line_colours(page, "loss-chart"), lambda c: len(c) == 2)
    assert len(colours) == 2, "the chart drew no training and held-out lines"
    ticks = step_ticks(page, "loss-chart")
    assert ticks and all(t.isdigit() for t in ticks), ticks  # whole steps: never 0.5
    # The log in the page's words: each job as what it did, no command lines, no server folders.
    shown = page.locator("#log textarea").input_value()
    assert str(ui_app.root) not in shown and "$ hubtune" not in shown, shown
    whole = views.page_log(RunFolder(run), 500)
    assert "▶ Training starts (a new run)" in whole and re.search(r"▶ Resuming from the checkpoint at step \d+", whole)
    assert "--resume" not in whole and "SIGTERM" not in whole, whole
    shot(page, "train")

    # The run in the history.
    tab(page, "3. Runs")
    expect(page.locator("#runs-note")).not_to_contain_text("No runs")
    pick(page, "run-pick", run_name)
    expect(page.locator("#run-line")).to_contain_text("finished")
    expect(page.locator("#run-chart g.mark-line path").first).to_be_visible()  # its curves, drawn in its box
    shot(page, "runs")

    # Chat: the tuned adapter answers.
    tab(page, "4. Chat")
    pick(page, "chat-run", run_name)
    page.locator("#chat-prompt textarea").fill(
        "Extract all product names and prices from this invoice text.\n\n"
        "INVOICE #1234\nProduct: Steel Lamp\nQuantity: 2\nPrice: $45.00")
    page.locator("#chat-send").click()
    answer = page.locator('#tuned-answer [data-testid="bot"]')
    expect(answer).to_be_visible(timeout=180_000)
    expect(page.locator('#base-answer [data-testid="bot"]')).to_be_visible()
    expect(page.locator("#chat-send")).to_be_enabled(timeout=180_000)
    assert "Problem" not in answer.inner_text()
    shot(page, "chat")
    log(started, "chat answered")

    # Publish: the repo name is prefilled, the card previewed, the push lands on the (loopback) Hub.
    tab(page, "5. Publish")
    pick(page, "publish-run", run_name)
    expect(page.locator("#publish-repo textarea")).to_have_value(re.compile(rf"^{HUB_USER}/tiny-llama-"))
    expect(page.locator("#card-preview")).to_contain_text("QLoRA")
    repo = page.locator("#publish-repo textarea").input_value()
    page.locator("#push").click()
    expect(page.locator("#push-result")).to_contain_text("Published", timeout=120_000)
    files = hub.files(repo)
    assert "adapter_model.safetensors" in files and "README.md" in files
    assert HUB_TOKEN.encode() not in b"".join(files.values())
    shot(page, "publish")

    # Export: merge into the base from the page (a `hubtune merge` job), then download the merged weights.
    tab(page, "6. Export")
    pick(page, "export-run", run_name)
    expect(page.locator("#merge-result")).to_contain_text("Not merged yet")
    page.locator("#merge").click()
    expect(page.locator("#export-status")).to_contain_text("hubtune merge")
    expect(page.locator("#merge-result")).to_contain_text("Largest logit difference", timeout=LONG)
    expect(page.locator("#export-status")).to_contain_text("finished")
    weights = page.locator("#merge-files tr", has_text=re.compile(r"model\s*\.safetensors"))
    with page.expect_download() as download:
        weights.locator("td.download a").click()
    merged = json.loads((run / "merge.json").read_text())["folder"]
    assert Path(download.value.path()).read_bytes() == (Path(merged) / "model.safetensors").read_bytes()
    shot(page, "export")
    log(started, "merged and downloaded")
    print(f"browser test wall time: {time.time() - started:.0f} s")


def test_the_method_choice_moves_the_memory_line(ui_app, hub, page: Page):
    """The method is a choice on the Train tab; the memory estimate under it follows each change."""
    page.set_default_timeout(60_000)
    page.goto(ui_app.local_url)
    sign_in(page)
    tab(page, "2. Train")
    estimate = page.locator("#estimate")
    expect(estimate).to_contain_text("Will it fit: about", timeout=120_000)  # the first compose: slow when busy
    sft_line = estimate.inner_text()
    for method, shown in (("dpo", "DPO, QLoRA"), ("grpo", "GRPO, QLoRA")):
        page.locator("#method").get_by_label(method, exact=True).check()
        expect(estimate).to_contain_text(shown, timeout=60_000)
        assert gigabytes(estimate.inner_text()) > gigabytes(sft_line), (sft_line, estimate.inner_text())
    page.locator("#method").get_by_label("sft", exact=True).check()
    expect(estimate).not_to_contain_text("GRPO", timeout=60_000)
    expect(estimate).to_contain_text(f"about {gigabytes(sft_line):.1f} GB peak on the GPU (QLoRA")


def legend(page: Page, chart: str) -> list[str]:
    """The words the chart draws (its legend and axis titles): what a reader sees, not the data behind it."""
    return page.eval_on_selector_all(f"#{chart} svg text", "els => els.map(e => e.textContent)")


def test_own_data_in_the_browser(ui_app, hub, page: Page, tmp_path):
    """The path every real user takes: their own file of one-word labels, uploaded, declared, trained,
    evaluated and published, with the file named as they named it and nothing mixed in unasked."""
    from data_rows import label_rows, write_jsonl

    started = time.time()
    mine = write_jsonl(tmp_path / "my_labels.jsonl", label_rows(60))
    page.set_default_timeout(60_000)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(ui_app.local_url)
    sign_in(page)

    # Upload, declare the rights, check: every row kept, nothing general mixed in, the file by its name.
    page.locator("#upload input[type=file]").set_input_files(str(mine))
    expect(page.locator("#upload").get_by_role("cell", name="my_labels.jsonl")).to_be_visible()  # name, extension
    expect(page.locator("#mix input")).not_to_be_checked()
    page.locator("#rights input").check()
    page.get_by_role("button", name="Check model and data").click()
    expect(page.locator("#data-format")).to_contain_text("60 rows", timeout=120_000)
    expect(page.locator("#data-training-on")).to_contain_text("Training on: my_labels.jsonl, 60 rows, uploaded")
    expect(page.locator("#data-training-on")).to_contain_text("no general data mixed in")
    expect(page.locator("#data-training-on")).to_contain_text("50 rows for training (0 of them general), 10 held out")
    expect(page.locator("#data-report")).to_contain_text("Kept 60 of 60")
    expect(page.locator("#licence")).to_contain_text("declared by the uploader")
    assert "uploads/" not in page.locator("body").inner_text()  # the file by its name, not the server's copy
    shot(page, "own-data")
    log(started, "own data checked")

    # Train: a short run; a 60-row file holds out 10 rows by default, said before training, with the steps and
    # the duration on this device. The held-out loss every 6 steps.
    tab(page, "2. Train")
    expect(page.locator("#training-on")).to_contain_text("Training on: my_labels.jsonl, 60 rows, uploaded")
    expect(page.locator("#training-on")).to_contain_text("10 rows held out")
    page.locator("#max-steps input").fill("12")
    page.locator("#max-steps input").press("Tab")
    expect(page.locator("#estimate")).to_contain_text("This run: 12 steps; no duration estimate yet")  # a fresh machine
    shown = edit_config(page, {"logging_steps: 5": "logging_steps: 1", "eval_steps: 20": "eval_steps: 6",
                               "path: my_labels.jsonl": "path: my_labels.jsonl"}, steps=12)  # the upload by its name
    assert str(ui_app.root) not in shown
    page.locator("#start").click()
    expect(page.locator("#train-message")).to_contain_text("Queued")
    run_name = re.search(r"tiny-llama-[\d-]+", page.locator("#train-message").inner_text()).group(0)
    expect(page.locator("#progress")).to_contain_text("finished · step 12/12", timeout=LONG)
    page.locator("#loss-chart").scroll_into_view_if_needed()
    words = eventually(page, lambda: legend(page, "loss-chart"),
                       lambda w: "training loss" in w and "held-out loss" in w)
    assert "training loss" in words and "held-out loss" in words, words
    # ...and in view: drawn inside the chart's box, not cut off below it.
    box = page.locator("#loss-chart").bounding_box()
    entry = page.locator("#loss-chart svg text", has_text="held-out loss").first.bounding_box()
    assert entry["y"] + entry["height"] <= box["y"] + box["height"], (entry, box)
    assert str(ui_app.root) not in page.locator("#log textarea").input_value()
    shot(page, "own-train")
    log(started, "own data trained")

    # Evaluate: the result appears by itself, no Refresh pressed.
    tab(page, "3. Runs")
    pick(page, "run-pick", run_name)
    expect(page.locator("#run-line")).to_contain_text("finished")
    page.locator("#eval-limit input").fill("5")
    page.get_by_role("button", name="Evaluate").click()
    expect(page.locator("#eval-report")).to_contain_text("held-out loss", timeout=LONG)
    expect(page.locator("#run-pick input")).to_have_value(f"{run_name} (evaluated)")  # its label follows too
    expect(page.locator("#run-message")).not_to_contain_text("Evaluating")  # and the job's message is done
    shot(page, "own-runs")
    log(started, "own data evaluated")

    # Publish: the rights declaration stands in for an acknowledgement; the card names the file.
    tab(page, "5. Publish")
    pick(page, "publish-run", run_name)
    expect(page.locator("#card-preview")).to_contain_text("my_labels.jsonl")
    repo = page.locator("#publish-repo textarea").input_value()
    page.locator("#push").click()
    expect(page.locator("#push-result")).to_contain_text("Published", timeout=120_000)
    shot(page, "own-publish")

    run = RunFolder(ui_app.root / run_name)
    report = run.read_json(RunFolder.DATA_REPORT)
    assert (report["kept"], report["mixed"], report["eval"]) == (60, 0, 10)
    files = hub.files(repo)
    assert not [n for n, body in files.items() if str(ui_app.root).encode() in body], "a server path was published"
    card = files["README.md"].decode()
    assert "`my_labels.jsonl` | task data | 50 |" in card and "general data mixed in" not in card
    assert int(re.search(r"\| Training examples \| (\d+)", card).group(1)) == report["train"] == run.summary.train_examples
    assert "was declared by its uploader" in card
    print(f"own-data browser test wall time: {time.time() - started:.0f} s")
