"""The Gradio app: one function builds the page, thin over handlers.py (which call the library) and the
job runner. Tabs follow what a user does: model and data, train, runs, chat, publish, export.

    from hubtune.ui import build_app
    build_app().launch()          # or: hubtune ui
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import gradio as gr
import pandas as pd

from hubtune import config as cfg
from hubtune.config import field_at
from hubtune.errors import HubtuneError
from hubtune.export.convert import QUANTS
from hubtune.merge import DTYPES as MERGE_DTYPES
from hubtune.runs import RunFolder, Status, list_runs
from hubtune.ui import access, charts, hosting, views
from hubtune.ui import handlers as h
from hubtune.ui.jobs import JobRunner

POLL_SECONDS = 2.0
LOG_LINES, RUN_LOG_LINES = 8, 6  # the log boxes' heights: the newest line is always in view
FORMATS = list(get_args(field_at("data.format").annotation))  # the run config's own choices
NO_RUNS = "No runs yet under {root}: start one on the Train tab."
NO_FINISHED = "No finished runs yet: train one first (chat, publishing and export need a finished run)."


def _frame(points: list[dict], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(points, columns=columns)


def _histogram(bins: list[dict]):
    """The length histogram with its bins in numeric order (they are labels like "17-32", which a plot
    would otherwise sort as text)."""
    frame = _frame(bins, ["tokens", "examples"])
    return gr.BarPlot(frame, sort=[b["tokens"] for b in bins] or None)


def _progress_bar(fraction: float | None) -> str:
    pct = 0 if fraction is None else round(fraction * 100)
    return (f'<div id="progress-bar" data-percent="{pct}" style="background:#e5e7eb;border-radius:6px;height:14px">'
            f'<div style="width:{pct}%;background:#f59e0b;height:14px;border-radius:6px"></div></div>')


def _downloadable(files: list[str]) -> list[str] | None:
    """Files for a download box, copied into Gradio's cache here (under a name derived from its per-server
    secret and their bytes). Gradio by itself hands out only files under the working directory or the temp
    folder, and a runs root elsewhere (a Space's mounted volume) must not be opened to its file route: that
    would serve every user's runs to anyone who guesses a path."""
    from gradio.processing_utils import save_file_to_cache
    from gradio.utils import get_upload_folder

    return [save_file_to_cache(f, get_upload_folder()) for f in files] or None


def build_app(root: str | Path | None = None, runner: JobRunner | None = None) -> gr.Blocks:
    # transformers' lazy module is not safe to import from several event threads at once (one of them can
    # see a half-initialised module: "cannot import name 'AutoTokenizer'"): import it once, here.
    import transformers  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    root = Path(root or hosting.runs_root()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    space = hosting.on_space()
    runner = runner or JobRunner(root, shared=space).start()
    models = h.ModelCache()
    gate = access.Gate(root, shared=space)

    def runs_for(session: h.Session) -> list[RunFolder]:
        return [r for r in list_runs(root) if gate.owns(r, session.user)]

    def mine(path: str | None, session: h.Session) -> str | None:
        """A run path this session may act on (access.Gate.run), or the page's error."""
        if not path:
            return None
        try:
            return str(gate.run(path, session))
        except HubtuneError as err:
            raise gr.Error(str(err)) from None

    def finished_choices(session: h.Session) -> list[tuple[str, str]]:
        return views.run_choices([r for r in runs_for(session) if r.summary is not None])

    # ---- event functions (thin: each calls handlers or views) ------------------------------------------------
    def sign_in(token: str):
        session, message = h.sign_in(token)
        return session, message

    def space_sign_in(oauth_token: gr.OAuthToken | None):
        session, message = h.sign_in(oauth_token.token if oauth_token else None)
        if released := runner.release(session.user, session.token):
            message += f" {released} of your queued runs, held since the Space restarted, take their turn again."
        return session, message

    def check_data(model, dataset, upload, fmt, columns, use, mix, rights, session):
        with session.hub():
            out = h.inspect_data(model, dataset, upload, fmt, columns, use, session, root, gate, mix=mix,
                                 rights=rights)
        rejected = upload and not out["source"]
        return (out["shape"], out["format"], _frame(out["rows"], list(out["rows"][0]) if out["rows"] else ["(no rows)"]),
                out["licence"], out["access"], out["report"], _histogram(out["histogram"]),
                _frame(out["pairs"], ["similarity", "kept", "removed"]), out["source"], out["training_on"],
                None if rejected else gr.skip(),  # a rejected upload is cleared, and no other data stands in
                "" if rejected else (f"{Path(upload).name} (uploaded)" if upload else gr.skip()))

    def compose(model, source, preset, epochs, max_steps, lr, use, fmt, columns, mix, rights, method, shape, session):
        try:
            gate.check_model(model)
            if source:
                gate.check_source(source, session)
        except HubtuneError as err:
            return "", h.problem(err), ""
        declared = h.declarations(source, rights, session, root)
        with session.hub():
            config_text, note = h.compose_config(model, source, preset, epochs, max_steps, lr, use, fmt, columns,
                                                 mix=mix, declared=declared, method=method, root=root, shape=shape)
            config_text = h.named_uploads(config_text, session, root)  # Start turns the name back (with_upload_paths)
            try:
                line = h.training_on(h.data_config(model, source, fmt, columns, use, mix=mix, declared=declared),
                                     root)
            except (HubtuneError, ValueError) as err:
                line = f"**Nothing to train on yet:** {h.problem(err).removeprefix('**Problem:** ')}"
        return config_text, note, line

    def try_prompting(model, source, fmt, columns, use, limit, session):
        try:
            gate.require_user(session, "score the base model")
            gate.check_model(model)
            gate.check_source(source, session)
        except HubtuneError as err:
            return h.problem(err)
        with session.hub():
            return h.try_prompting(model, source, fmt, columns, use, limit)

    def start(config_text, push_to, current, session):
        try:
            gate.require_user(session, "start a run")
        except HubtuneError as err:
            return current, h.problem(err)
        with session.hub():
            path, message = h.start_training(config_text, push_to, session, runner, root, gate)
        # The progress line keeps following a live run; the queued one takes over when that one ends.
        live = current and Path(current).is_dir() and RunFolder(current).status in views.LIVE
        return (current if live or not path else path), message

    def pick_current(current, session):
        """The run the Train tab follows: the one this page started, else the user's newest live one (a
        reload or another browser reattaches), else the newest."""
        runs = runs_for(session)
        live = [r for r in runs if r.status in views.LIVE]
        if current and Path(current).is_dir() and (RunFolder(current).status in views.LIVE or not live):
            return current
        chosen = live[0] if live else (runs[0] if runs else None)
        return str(chosen.path) if chosen else None

    def watch(current, session, shown):
        """One poll of the followed run. The chart is sent only when it has new points (`shown` is what
        this page last drew), so it never redraws, or flickers, for nothing."""
        current = pick_current(current, session)
        if not current:
            return (None, "No run yet: start one above.", _progress_bar(None), None, "no points yet", "", None,
                    gr.update(interactive=True), gr.update(interactive=False))
        run = RunFolder(current)
        p = views.progress(run, place=runner.place(run.path),
                           memory=views.process_memory_mb(runner.pid(run.path)))
        points = views.loss_points([run])
        drawn = (current, len(points))
        chart_value = gr.skip() if drawn == shown else charts.loss_chart(points)
        # No duplicate jobs: Resume waits until the run's job is over; Start waits while the run it just
        # queued has not started (a second press would queue the same run twice), then queues behind it.
        busy = runner.is_active(run.path) or run.status in views.LIVE
        return (current, p["line"], _progress_bar(p["fraction"]), chart_value, views.chart_caption(points),
                views.log_tail(run, LOG_LINES), drawn, gr.update(interactive=run.status != Status.QUEUED),
                gr.update(interactive=not busy and run.status in (Status.INTERRUPTED, Status.FAILED)))

    def stop(current, session):
        return runner.stop(mine(current, session)) if current else "No run to stop."

    def resume(current, session):
        return h.resume_run(mine(current, session), session, runner) if current else "No run to resume."

    def refresh_runs(session, selected):
        runs = runs_for(session)
        choices = views.run_choices(runs)
        paths = [c[1] for c in choices]
        value = selected if selected in paths else (paths[0] if paths else None)
        note = "" if runs else NO_RUNS.format(root=root)
        table = pd.DataFrame(views.runs_table(runs), columns=["run", "status", "owner", "base", "steps",
                                                              "held-out loss", "error"])
        return (table, gr.update(choices=choices, value=value), gr.update(choices=choices, value=None), note)

    def show_run(path, session):
        if not path:
            return "", "", None, "", [], ""
        run = RunFolder(mine(path, session))
        p = views.progress(run, place=runner.place(run.path))
        eval_text, samples = h.eval_view(path)
        table = pd.DataFrame(samples) if samples else pd.DataFrame(columns=["prompt", "reference", "base", "tuned"])
        return (p["line"], views.page_words(run.config.to_yaml(), run), charts.loss_chart(views.loss_points([run])),
                eval_text, table, views.log_tail(run, RUN_LOG_LINES))

    def follow_run(path, session, seen):
        """The Runs tab keeps itself current: when the picked run's status, metrics, log or evaluation
        changed since the last poll, its views are sent again (nothing is sent otherwise)."""
        unchanged = (gr.skip(),) * 7 + (seen, gr.skip())
        if not path or not Path(path).is_dir():
            return unchanged
        run = RunFolder(mine(path, session))
        stamp = lambda f: (f.stat().st_mtime, f.stat().st_size) if f.is_file() else None  # noqa: E731
        key = (path, run.status.value, stamp(run.path / RunFolder.EVAL), stamp(run.path / RunFolder.METRICS),
               stamp(run.path / views.LOG))
        if key == seen:
            return unchanged
        p = views.progress(run, place=runner.place(run.path))
        eval_text, rows = h.eval_view(path)
        table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["prompt", "reference", "base", "tuned"])
        runs = runs_for(session)
        history = pd.DataFrame(views.runs_table(runs), columns=["run", "status", "owner", "base", "steps",
                                                                "held-out loss", "error"])
        chart_value = charts.loss_chart(views.loss_points([run])) if seen and seen[0] == path else gr.skip()
        # The Run list's labels carry each run's status: relabelled when this one's changed (same value picked).
        relabel = (gr.update(choices=views.run_choices(runs)) if seen and seen[0] == path and seen[1] != key[1]
                   else gr.skip())
        # A job's "Evaluating … in the background" is done once the run is no longer live.
        done = "" if seen and seen[0] == path and seen[1] != key[1] and run.status not in views.LIVE else gr.skip()
        return (p["line"], eval_text, table, views.log_tail(run, RUN_LOG_LINES), history, chart_value, done, key,
                relabel)

    def compare(a, b, session):
        if not a or not b:
            return "Pick two runs to compare.", None
        runs = [RunFolder(mine(a, session)), RunFolder(mine(b, session))]
        return views.config_diff(*runs), charts.loss_chart(views.loss_points(runs, label_runs=True))

    def ask(run, prompt, base_turns, tuned_turns, system, temperature, top_p, max_tokens, session):
        if not run:
            yield base_turns, (tuned_turns or []) + [{"role": "assistant", "content": NO_FINISHED}], prompt
            return
        for base, tuned in session.iterate(h.chat(mine(run, session), prompt, models, max_tokens, base_turns,
                                                  tuned_turns, system, temperature, top_p)):
            yield base, tuned, ""

    def refresh_finished(session, selected):
        choices = finished_choices(session)
        paths = [c[1] for c in choices]
        value = selected if selected in paths else (paths[0] if paths else None)
        return gr.update(choices=choices, value=value), ("" if choices else NO_FINISHED)

    def publish_defaults(run, session):
        if not run:
            return "", NO_FINISHED
        path = mine(run, session)
        with session.hub():
            return h.publish_defaults(path, session)

    def show_export(path, session):
        """The Export tab for one run: its merge or export job, the last merge and GGUF export, their files."""
        if not path:
            return "", "", None, "", None, "", None
        path = mine(path, session)
        merge_text, merged = h.merge_view(path)
        gguf_text, exported = h.gguf_view(path)
        return (h.export_status(path, runner), merge_text, _downloadable(merged), gguf_text, _downloadable(exported),
                views.log_tail(RunFolder(path), RUN_LOG_LINES), _export_key(path))

    def _export_key(path):
        run = RunFolder(path)
        job = runner.job(run.path)
        stamp = lambda f: (f.stat().st_mtime, f.stat().st_size) if f.is_file() else None  # noqa: E731
        return (path, job.kind if job else None, runner.place(run.path), stamp(run.path / RunFolder.JOB_RECORD),
                stamp(run.path / RunFolder.JOB_LOG), stamp(run.path / RunFolder.MERGE),
                stamp(run.path / RunFolder.EXPORT))

    def follow_export(path, session, seen):
        """While the Export tab is open: its views are sent again when the run's job, log or results changed.
        The files only when their record did (each send hashes and copies them for download)."""
        if not path or not Path(path).is_dir():
            return (gr.skip(),) * 6 + (seen,)
        path = mine(path, session)
        key = _export_key(path)
        if key == seen:
            return (gr.skip(),) * 6 + (seen,)
        same = lambda i: seen is not None and seen[0] == path and seen[i] == key[i]  # noqa: E731
        merge_text, merged = (gr.skip(), gr.skip()) if same(5) else h.merge_view(path)
        gguf_text, exported = (gr.skip(), gr.skip()) if same(6) else h.gguf_view(path)
        return (h.export_status(path, runner), merge_text, merged if same(5) else _downloadable(merged), gguf_text,
                exported if same(6) else _downloadable(exported), views.log_tail(RunFolder(path), RUN_LOG_LINES), key)

    # ---- the page ---------------------------------------------------------------------------------------------
    with gr.Blocks(title="hubtune") as app:
        session = gr.State(h.Session())
        current = gr.State(None)
        shown = gr.State(None)  # (run, points) the Train tab's chart last drew
        gr.Markdown("# hubtune\nFrom a base model and a dataset to a fine-tuned adapter on the Hub. "
                    "Start with the embedded demo: check the data, press **Start training**, watch the loss fall.")
        with gr.Row():
            if space:
                gr.LoginButton()
                token_box = None
            else:
                token_box = gr.Textbox(label="Hugging Face token", type="password", scale=2,
                                       placeholder="hf_... (empty: the `hf auth login` or HF_TOKEN token)")
            whoami = gr.Markdown()
        gr.Markdown(f"{hosting.storage_notice(root)}  \nDevice: {hosting.device_line()}")

        with gr.Tabs():
            with gr.Tab("1. Model and data", id="data"):
                with gr.Row():
                    model = gr.Textbox(h.DEMO_MODEL,
                                       label="Base model (Hub id, local folder, or the embedded hubtune:tiny-llama)")
                    dataset = gr.Textbox(h.DEMO_DATA, label="Dataset (Hub dataset id or local file)")
                    with gr.Column():
                        upload = gr.File(label=f"…or upload JSONL / CSV / Parquet (up to {hosting.UPLOAD_LIMIT_MB} MB)",
                                         file_types=[".jsonl", ".json", ".csv", ".parquet"], type="filepath",
                                         elem_id="upload")
                        rights = gr.Checkbox(False, label="I hold the rights to use and publish this file",
                                             elem_id="rights")
                with gr.Row():
                    fmt = gr.Dropdown(FORMATS, value="auto", label="Format")
                    columns = gr.Textbox(label="Column mapping (FIELD=COLUMN, ...)", placeholder="output=answer")
                    use = gr.Radio(["personal", "research", "commercial"], value="personal", label="Intended use")
                mix_on = gr.Checkbox(True, label=f"Mix in {h.MIX_RATIO:.0%} general instructions against forgetting: "
                                                 f"{h.GENERAL_DATA} (apache-2.0, built in). Off for your own data "
                                                 f"unless you turn it on", elem_id="mix")
                data_on = gr.Markdown(elem_id="data-training-on")
                check_btn = gr.Button("Check model and data", variant="secondary")
                data_format = gr.Markdown(elem_id="data-format")
                rows = gr.Dataframe(label="First rows", wrap=True, max_height=260)
                with gr.Row():
                    licence_md = gr.Markdown(elem_id="licence")
                    access_md = gr.Markdown(elem_id="access")
                report_md = gr.Markdown(elem_id="data-report")
                with gr.Row():
                    prompt_limit = gr.Number(20, label="Test examples", precision=0, minimum=1, scale=1)
                    prompt_btn = gr.Button("Try prompting first: score the base zero-shot and few-shot", scale=3)
                prompting_md = gr.Markdown(elem_id="prompting")
                with gr.Row():
                    # y from 0: a plot scaled to its data alone draws one bin as a bar of no height
                    histogram = gr.BarPlot(x="tokens", y="examples", label="Example length (tokens)", sort=None,
                                           y_lim=[0, None], elem_id="histogram")
                    pairs = gr.Dataframe(label="Closest near-duplicate pairs", wrap=True, max_height=260)
                source_used = gr.State(h.DEMO_DATA)
                checked = gr.State(None)  # the checked data's shape (views.data_shape), for the duration estimate

            with gr.Tab("2. Train", id="train"):
                with gr.Row():
                    preset = gr.Radio(list(h.PRESETS), value="quick", label="Preset")
                    method = gr.Radio(list(cfg.METHODS), value="sft", label="Method (dpo, orpo, kto: preference data; "
                                      "grpo: prompts with answers, rewards in the advanced settings)",
                                      elem_id="method")
                    epochs = gr.Number(0, label="Epochs (0: the preset's)", minimum=0)
                    max_steps = gr.Number(0, label="Max steps (0: the preset's)", minimum=0, precision=0,
                                          elem_id="max-steps")
                    lr = gr.Number(0, label="Learning rate (0: the config's)", minimum=0)
                train_on = gr.Markdown(elem_id="training-on")
                push_to = gr.Textbox(label="Push target, checked before training (optional, OWNER/NAME)")
                estimate = gr.Markdown(hosting.memory_estimate_line(None), elem_id="estimate")
                with gr.Accordion("Advanced: every setting (generated from the run config, editable)", open=False):
                    config_code = gr.Code(language="yaml", label="Run config", interactive=True, elem_id="config")
                with gr.Row():
                    start_btn = gr.Button("Start training", variant="primary", elem_id="start")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                    resume_btn = gr.Button("Resume", elem_id="resume")
                message = gr.Markdown(elem_id="train-message")
                progress_md = gr.Markdown(elem_id="progress")
                bar = gr.HTML(_progress_bar(None))
                # No fixed height: the chart grows to hold its legend (a fixed one cut the curve names off)
                chart = gr.Plot(None, label="Loss and rewards", elem_id="loss-chart")
                chart_note = gr.Markdown(elem_id="chart-caption")
                log = gr.Textbox(label="Log (last lines)", lines=8, max_lines=8, interactive=False, elem_id="log")

            with gr.Tab("3. Runs", id="runs") as runs_tab:
                refresh_btn = gr.Button("Refresh")
                runs_note = gr.Markdown(elem_id="runs-note")
                runs_table = gr.Dataframe(label="History", interactive=False, wrap=True)
                run_pick = gr.Dropdown(label="Run", choices=[], allow_custom_value=True, elem_id="run-pick")
                run_line = gr.Markdown(elem_id="run-line")
                with gr.Row():
                    run_resume = gr.Button("Resume")
                    eval_limit = gr.Number(20, label="Evaluate on at most N test examples", precision=0, minimum=1,
                                           elem_id="eval-limit")
                    run_eval = gr.Button("Evaluate")
                    confirm = gr.Checkbox(label="Confirm delete")
                    run_delete = gr.Button("Delete", variant="stop")
                run_message = gr.Markdown(elem_id="run-message")
                run_chart = gr.Plot(None, label="Loss", elem_id="run-chart")
                with gr.Accordion("Config", open=False):
                    run_config = gr.Code(language="yaml", interactive=False)
                run_log = gr.Textbox(label="Log of its last job (train or eval; updates while it runs)", lines=6,
                                     max_lines=6, interactive=False)
                eval_md = gr.Markdown(elem_id="eval-report")
                samples = gr.Dataframe(label="Sample answers, side by side", wrap=True, max_height=300)
                with gr.Accordion("Compare two runs", open=False):
                    run_b = gr.Dropdown(label="Compare with", choices=[], allow_custom_value=True)
                    diff = gr.Code(language=None, label="Config diff")
                    overlay = gr.Plot(None, label="Curves overlaid", elem_id="overlay-chart")

            with gr.Tab("4. Chat", id="chat") as chat_tab:
                chat_note = gr.Markdown()
                chat_run = gr.Dropdown(label="Finished run", choices=[], allow_custom_value=True, elem_id="chat-run")
                with gr.Accordion("System prompt and sampling", open=False):
                    system = gr.Textbox(label="System prompt (both models get it)", lines=2, elem_id="chat-system")
                    with gr.Row():
                        temperature = gr.Slider(0.0, 1.5, 0.0, step=0.05, label="Temperature (0: greedy)")
                        top_p = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="Top-p")
                        max_tokens = gr.Slider(16, 512, 128, step=16, label="Max new tokens")
                with gr.Row():
                    base_answer = gr.Chatbot(label="Base model", height=320, elem_id="base-answer")
                    tuned_answer = gr.Chatbot(label="Tuned adapter", height=320, elem_id="tuned-answer")
                prompt = gr.Textbox(label="Message (each model goes on from its own answers)", lines=3,
                                    elem_id="chat-prompt")
                with gr.Row():
                    send = gr.Button("Ask both", variant="primary", elem_id="chat-send")
                    new_chat = gr.Button("New conversation", elem_id="chat-clear")

            with gr.Tab("5. Publish", id="publish") as publish_tab:
                publish_note = gr.Markdown()
                pub_run = gr.Dropdown(label="Finished run", choices=[], allow_custom_value=True, elem_id="publish-run")
                with gr.Row():
                    repo = gr.Textbox(label="Repo (OWNER/NAME, prefilled to follow the licence's naming rule)",
                                      elem_id="publish-repo")
                    private = gr.Checkbox(True, label="Private")
                acknowledge = gr.Textbox(label="Acknowledge licences (repo ids or paths, comma-separated): only "
                                               "if the verdict asks and you hold the rights", elem_id="acknowledge")
                push_btn = gr.Button("Push to the Hub", variant="primary", elem_id="push")
                push_result = gr.Markdown(elem_id="push-result")
                gr.Markdown("### Model card preview")
                card = gr.Markdown(elem_id="card-preview")

            with gr.Tab("6. Export", id="export") as export_tab:
                export_note = gr.Markdown()
                export_pick = gr.Dropdown(label="Finished run", choices=[], allow_custom_value=True,
                                          elem_id="export-run")
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("### Merge into the base\nThe adapter folded into the base's original weights "
                                    "(also for a QLoRA run: never into a de-quantized 4-bit copy), one standalone "
                                    "model for any tool that loads transformers models.")
                        merge_dtype = gr.Radio(list(MERGE_DTYPES), value="auto",
                                               label="Saved weights (auto: the base's own dtype)")
                        merge_btn = gr.Button("Merge into the base", elem_id="merge")
                        merge_md = gr.Markdown(elem_id="merge-result")
                        merge_files = gr.File(label="Merged model: download", file_count="multiple",
                                              interactive=False, elem_id="merge-files")
                    with gr.Column():
                        gr.Markdown("### GGUF for llama.cpp, Ollama and LM Studio\nMerged, converted by llama.cpp's "
                                    "own tools, then checked: the run's test prompts through the file in llama.cpp "
                                    "and through the adapter, scored alike. f16 and q8_0 must match the adapter "
                                    "within its interval.")
                        quant = gr.Radio(list(QUANTS), value="q8_0", label="Precision")
                        parity_limit = gr.Number(50, label="Check on at most N test prompts (0: all)", precision=0,
                                                 minimum=0, elem_id="parity-limit")
                        export_btn = gr.Button("Export GGUF", elem_id="export")
                        gguf_md = gr.Markdown(elem_id="gguf-result")
                        gguf_files = gr.File(label="GGUF file, Ollama Modelfile and parity record: download",
                                             file_count="multiple", interactive=False, elem_id="gguf-files")
                export_status = gr.Markdown(elem_id="export-status")
                export_log = gr.Textbox(label="Log of its last job (updates while it runs)", lines=6, max_lines=6,
                                        interactive=False)

        timer = gr.Timer(POLL_SECONDS)
        export_seen = gr.State(None)  # what the Export tab last showed of its picked run
        followed = gr.State(None)  # what the Runs tab last showed of its picked run

        # ---- wiring ---------------------------------------------------------------------------------------------
        compose_inputs = [model, source_used, preset, epochs, max_steps, lr, use, fmt, columns, mix_on, rights, method,
                          checked, session]
        compose_outputs = [config_code, estimate, train_on]
        if space:
            app.load(space_sign_in, None, [session, whoami], api_name="sign_in")
        else:
            app.load(sign_in, [token_box], [session, whoami], api_name=False)
            token_box.change(sign_in, [token_box], [session, whoami], api_name="sign_in")
        app.load(compose, compose_inputs, compose_outputs, api_name=False)
        follow = ([current, session, shown], [current, progress_md, bar, chart, chart_note, log, shown, start_btn,
                                              resume_btn])
        app.load(watch, *follow, api_name=False)

        check_btn.click(check_data, [model, dataset, upload, fmt, columns, use, mix_on, rights, session],
                        [checked, data_format, rows, licence_md, access_md, report_md, histogram, pairs, source_used,
                         data_on, upload, dataset],
                        api_name="check_data").then(compose, compose_inputs, compose_outputs, api_name=False)
        prompt_btn.click(try_prompting, [model, source_used, fmt, columns, use, prompt_limit, session], [prompting_md],
                         api_name="try_prompting")
        for field in (model, preset, epochs, max_steps, lr, use, fmt, columns, mix_on, rights, method):  # dataset: below
            field.change(compose, compose_inputs, compose_outputs, api_name=False)
        # Typed by the user (not the "NAME (uploaded)" the page writes there): that dataset, mixed as it says.
        dataset.input(lambda d: (d, d.strip() == h.DEMO_DATA), dataset, [source_used, mix_on], api_name=False).then(
            compose, compose_inputs, compose_outputs, api_name=False)
        upload.upload(lambda: False, None, mix_on, api_name=False)  # the user's own file: nothing mixed in unasked

        start_btn.click(start, [config_code, push_to, current, session], [current, message], api_name="start").then(
            watch, *follow, api_name=False)
        stop_btn.click(stop, [current, session], [message], api_name="stop")
        resume_btn.click(resume, [current, session], [message], api_name="resume")
        timer.tick(watch, *follow, api_name="progress", show_progress="hidden")

        refresh_outputs = [runs_table, run_pick, run_b, runs_note]
        refresh_btn.click(refresh_runs, [session, run_pick], refresh_outputs, api_name="runs")
        runs_tab.select(refresh_runs, [session, run_pick], refresh_outputs, api_name=False)
        run_outputs = [run_line, run_config, run_chart, eval_md, samples, run_log]
        run_pick.change(show_run, [run_pick, session], run_outputs, api_name="run")
        refresh_btn.click(show_run, [run_pick, session], run_outputs, api_name=False)
        run_resume.click(lambda r, s: h.resume_run(mine(r, s), s, runner) if r else "Pick a run.",
                         [run_pick, session], [run_message], api_name="resume_run")
        run_eval.click(lambda r, n, s: h.evaluate_run(mine(r, s), n, s, runner) if r else "Pick a run.",
                       [run_pick, eval_limit, session], [run_message], api_name="evaluate")
        run_delete.click(lambda r, c, s: h.delete_run(mine(r, s), c, runner, root) if r else "Pick a run.",
                         [run_pick, confirm, session], [run_message], api_name="delete").then(
            refresh_runs, [session, run_pick], refresh_outputs, api_name=False)
        run_b.change(compare, [run_pick, run_b, session], [diff, overlay], api_name="compare")
        timer.tick(follow_run, [run_pick, session, followed],
                   [run_line, eval_md, samples, run_log, runs_table, run_chart, run_message, followed, run_pick],
                   api_name=False, show_progress="hidden")

        chat_tab.select(refresh_finished, [session, chat_run], [chat_run, chat_note], api_name=False)
        send.click(ask, [chat_run, prompt, base_answer, tuned_answer, system, temperature, top_p, max_tokens, session],
                   [base_answer, tuned_answer, prompt], api_name="chat")
        new_chat.click(lambda: ([], []), None, [base_answer, tuned_answer], api_name=False)
        chat_run.change(lambda: ([], []), None, [base_answer, tuned_answer], api_name=False)

        publish_tab.select(refresh_finished, [session, pub_run], [pub_run, publish_note], api_name=False)
        pub_run.change(publish_defaults, [pub_run, session], [repo, card], api_name="publish_defaults")
        repo.blur(lambda r, name, s: h.card_preview(mine(r, s), name) if r else NO_FINISHED, [pub_run, repo, session],
                  [card], api_name=False)
        push_btn.click(lambda r, name, p, a, s: h.publish(mine(r, s), name, p, s, a) if r else NO_FINISHED,
                       [pub_run, repo, private, acknowledge, session], [push_result], api_name="publish")

        export_tab.select(refresh_finished, [session, export_pick], [export_pick, export_note], api_name=False)
        export_outputs = [export_status, merge_md, merge_files, gguf_md, gguf_files, export_log, export_seen]
        export_pick.change(show_export, [export_pick, session], export_outputs, api_name="export_view")
        merge_btn.click(lambda r, d, s: h.merge_run(mine(r, s), d, s, runner) if r else NO_FINISHED,
                        [export_pick, merge_dtype, session], [export_status], api_name="merge")
        export_btn.click(lambda r, q, n, s: h.export_run(mine(r, s), q, n, s, runner) if r else NO_FINISHED,
                         [export_pick, quant, parity_limit, session], [export_status], api_name="export")
        timer.tick(follow_export, [export_pick, session, export_seen], export_outputs, api_name=False,
                   show_progress="hidden")

    app.runner = runner  # for `hubtune ui` and the tests: the runner this app schedules on
    return app


def launch(root: str | Path | None = None, share_token_with_visitors: bool = False, **kwargs) -> None:
    """Build and serve the app; GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose the address, as for any Gradio
    app. Outside a Space, an address beyond loopback needs `share_token_with_visitors` (hosting.check_address)."""
    import os

    host = kwargs.get("server_name") or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    hosting.check_address(host, share_token_with_visitors)
    app = build_app(root)
    app.queue(default_concurrency_limit=4).launch(max_file_size=f"{hosting.UPLOAD_LIMIT_MB}mb", **kwargs)
