"""Training on Hugging Face Jobs: `hubtune train CONFIG --on hf-jobs --flavor a10g-small [--timeout 6h]`.

A job's disk is deleted when it ends, so a job trains a run mirrored on the Hub: hubtune uploads the
config to the run's repo (training.push_checkpoints, private), and the job runs
`hubtune train --resume OWNER/REPO`, which downloads it, trains, mirrors each checkpoint there and
uploads the finished run. A job that stops early (timeout, preemption) leaves its last checkpoint in
the repo, and `hubtune train --resume OWNER/REPO` continues it anywhere, on Jobs or not.

Before anything is submitted: the licence gate, the token's write permission on the repo's owner (and
Jobs permission for fine-grained tokens), references the job cannot reach (local files), and a timeout
that covers the estimated run (the Jobs default is 30 minutes). The token travels as a job secret,
never in the command or the environment.

    submission = submit(config, flavor="a10g-small", timeout="6h")
    status(submission.job.id); logs(submission.job.id); cancel(submission.job.id)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hubtune import __version__
from hubtune import config as cfg
from hubtune.errors import ConfigError, JobError
from hubtune.runs import RunFolder
from hubtune.gpus import CPU_TFLOPS, by_flavor
from hubtune.refs import RepoRef

# The Jobs image for `uv run` scripts: Python 3.12 with uv; torch's PyPI wheels bring their own CUDA.
DEFAULT_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"
DEFAULT_INSTALL = f"hubtune=={__version__}"
JOBS_DEFAULT_TIMEOUT = 30 * 60  # what the Hub gives a job that does not ask

MFU = {"lora": 0.35, "qlora": 0.25}  # share of the nominal figure fine-tuning reaches; 4-bit dequantizes each step
SETUP_SECONDS = 10 * 60  # install hubtune and torch, download the base


@dataclass(frozen=True)
class RunEstimate:
    steps: int
    seconds_per_step: float
    setup_seconds: float
    parameters: int
    flavor: str

    @property
    def seconds(self) -> float:
        return self.steps * self.seconds_per_step + self.setup_seconds

    def describe(self) -> str:
        return (f"about {duration(self.seconds)} on {self.flavor}: {self.steps} steps x ~{self.seconds_per_step:.1f} s "
                f"({self.parameters / 1e9:.2f}B parameters) + {duration(self.setup_seconds)} to install and download")


@dataclass(frozen=True)
class Submission:
    job: object  # huggingface_hub.JobInfo
    repo_id: str  # where the checkpoints and the finished run go
    repo_url: str
    timeout_seconds: int
    estimate: RunEstimate
    command: list[str]


# ---- submitting -------------------------------------------------------------------------------------------
def submit(config: cfg.RunConfig, *, flavor: str, timeout: str | int | None = None, install: str = DEFAULT_INSTALL,
           image: str = DEFAULT_IMAGE, token: str | None = None, num_processes: int | None = None) -> Submission:
    """Check, upload the config to its run repo and submit a job that trains it there."""
    from hubtune import licence
    from hubtune.publish import push_errors

    _check_flavor(flavor)
    _reachable_from_a_job(config)
    token, api, me = _account(token)
    if not config.training.push_checkpoints:
        name = config.output.dir and Path(config.output.dir).name or "hubtune-run"
        raise ConfigError([("training.push_checkpoints", f"a job's disk is deleted when it ends, so its checkpoints "
                                                         f"and the finished run go to a Hub repo: set "
                                                         f"training.push_checkpoints={me['name']}/{name}")])
    repo = config.training.push_checkpoints
    _can_write(me, repo)
    licence.gate_for_training(config)
    estimate = estimate_run(config, flavor)
    seconds = _timeout_for(estimate, timeout)

    with push_errors(repo):
        url = str(api.create_repo(repo, private=True, exist_ok=True))
        files = api.list_repo_files(repo)
        if any(f.startswith(f"{RunFolder.CHECKPOINTS}/") or f == RunFolder.SUMMARY for f in files):
            raise JobError(f"{repo} already holds a run: continue it with `hubtune train --resume {repo} --on hf-jobs "
                           f"--flavor {flavor}`, or choose another training.push_checkpoints")
        job_config = config.model_copy(deep=True)
        job_config.output.dir = None  # the job's own folder, runs/<repo name>
        api.upload_file(path_or_fileobj=job_config.to_yaml().encode(), path_in_repo=RunFolder.CONFIG, repo_id=repo,
                        commit_message="hubtune: run config for a Hugging Face Job")
    return _run_job(api, token, me, repo, url, flavor, seconds, estimate, install, image, num_processes)


def submit_resume(repo: str, *, flavor: str, timeout: str | int | None = None, install: str = DEFAULT_INSTALL,
                  image: str = DEFAULT_IMAGE, token: str | None = None, num_processes: int | None = None) -> Submission:
    """Submit a job that continues the run mirrored in `repo` from its latest checkpoint."""
    from huggingface_hub import hf_hub_download

    from hubtune import licence
    from hubtune.hub import hub_errors, hub_url

    token, api, me = _account(token)
    _check_flavor(flavor)
    with hub_errors(repo, "model"):
        config = cfg.load(hf_hub_download(repo, RunFolder.CONFIG, token=token))
    _reachable_from_a_job(config)
    _can_write(me, repo)
    licence.gate_for_training(config)
    estimate = estimate_run(config, flavor)
    seconds = _timeout_for(estimate, timeout)
    return _run_job(api, token, me, repo, hub_url(repo), flavor, seconds, estimate, install, image, num_processes)


def job_command(repo: str, flavor: str, num_processes: int | None = None) -> list[str]:
    """What the job runs (after `uv run --with hubtune`): the mirrored run, resumed from the Hub."""
    gpus = gpus_of(flavor)
    processes = num_processes or (gpus if gpus > 1 else None)
    return ["train", "--resume", repo, *(["--num-processes", str(processes)] if processes else [])]


def _run_job(api, token, me, repo, url, flavor, seconds, estimate, install, image, num_processes) -> Submission:
    from huggingface_hub import constants

    from hubtune.hub import hub_errors

    env = {"PYTHONUNBUFFERED": "1"}
    if constants.ENDPOINT.rstrip("/") != "https://huggingface.co":
        env["HF_ENDPOINT"] = constants.ENDPOINT  # a private Hub deployment: the job talks to the same one
    args = job_command(repo, flavor, num_processes)
    with hub_errors(repo, "model"):
        job = api.run_uv_job("hubtune", script_args=args, dependencies=[install], image=image, env=env,
                             secrets={"HF_TOKEN": token}, flavor=flavor, timeout=seconds,
                             labels={"hubtune": "train"}, namespace=me["name"])
    return Submission(job, repo, url, seconds, estimate, ["hubtune", *args])


def _account(token: str | None):
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise JobError("no Hugging Face token is set: a job needs one (sent to it as a secret) to read the base "
                       "and write the run. Set a write token with `export HF_TOKEN=hf_...` or `hf auth login`")
    api = HfApi(token=token)
    try:
        me = api.whoami()
    except Exception as err:
        raise JobError(f"the Hub did not accept the token ({err}); set a valid write token with "
                       f"`export HF_TOKEN=hf_...` or `hf auth login`") from None
    return token, api, me


def _check_flavor(flavor: str) -> None:
    from huggingface_hub import JobHardware

    known = [h.value for h in JobHardware]
    if flavor not in known:
        raise JobError(f"--flavor {flavor!r} is not a Jobs hardware flavor; use one of {', '.join(known)}")


def _reachable_from_a_job(config: cfg.RunConfig) -> None:
    """A job sees the Hub and hubtune's built-in assets, not this machine's files."""
    refs = [("model.id", config.model.id)]
    refs += [(f"data.sources.{i}.path", s.path) for i, s in enumerate(config.data.sources)]
    if config.data.mix.source and config.data.mix.ratio > 0:
        refs.append(("data.mix.source.path", config.data.mix.source.path))
    problems = [(where, f"{ref} is a local path a job cannot read: upload it to the Hub first (`hf upload "
                        f"OWNER/NAME {ref}{' --repo-type dataset' if where.startswith('data') else ''}`) and use "
                        f"the repo id") for where, ref in refs if RepoRef.parse(ref).kind == "local"]
    if problems:
        raise ConfigError(problems)


def _can_write(me: dict, repo: str) -> None:
    """The token may write `repo` (its role, or a fine-grained token's permissions on the owner) and run jobs."""
    owner = repo.split("/")[0]
    name = me.get("name")
    orgs = {o.get("name") for o in me.get("orgs", [])}
    if owner != name and owner not in orgs:
        raise JobError(f"{name} cannot create {repo}: {owner!r} is neither your account nor one of your organisations "
                       f"({', '.join(sorted(orgs)) or 'none'}). Set training.push_checkpoints to {name}/...")
    access = (me.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    fix = f"create a token with write access at {_settings_url()} and set it with `export HF_TOKEN=hf_...`"
    if role == "read":
        raise JobError(f"the token is read-only: the job could not upload checkpoints to {repo}; {fix}")
    if role == "fineGrained":
        granted = _fine_grained(access.get("fineGrained") or {}, owner, repo)
        missing = [p for p in ("repo.write", "job.write") if p not in granted]
        if missing:
            raise JobError(f"the fine-grained token lacks {' and '.join(missing)} for {owner!r}: the job needs to write "
                           f"{repo} and to run; add them to the token at {_settings_url()}")


def _fine_grained(grants: dict, owner: str, repo: str) -> set[str]:
    permissions = set(grants.get("global") or [])
    for scope in grants.get("scoped") or []:
        entity = scope.get("entity") or {}
        if entity.get("name") in (owner, repo):
            permissions |= set(scope.get("permissions") or [])
    return permissions


def _settings_url() -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/settings/tokens"


# ---- how long it will take ----------------------------------------------------------------------------------
def gpus_of(flavor: str) -> int:
    if flavor.startswith("cpu"):
        return 0
    m = re.search(r"x(\d+)$", flavor)
    return int(m.group(1)) if m else 1


def estimate_run(config: cfg.RunConfig, flavor: str) -> RunEstimate:
    """Steps x (6 x parameters x tokens per step) / (the flavor's throughput), plus setup. An upper bound on
    tokens (every sequence at max_seq_len) keeps it on the long side."""
    from hubtune.distributed import BatchPlan

    t = config.training
    gpus = gpus_of(flavor)
    processes = max(gpus, 1) if (gpus > 1 or t.distributed != "none") else 1
    rows = None if t.max_steps else _training_rows(config)
    plan = BatchPlan(t.micro_batch_size, t.gradient_accumulation_steps, processes, rows or 0, t.epochs, t.max_steps)
    params = _parameters(config.model)
    tokens = plan.effective_batch_size * config.data.max_seq_len
    per_second = nominal_tokens_per_second(config, by_flavor(flavor), max(gpus, 1), params)
    setup = SETUP_SECONDS + params * 2 / 100e6  # 16-bit weights at ~100 MB/s
    return RunEstimate(plan.total_steps, tokens / per_second, setup, params, flavor)


def nominal_tokens_per_second(config: cfg.RunConfig, gpu, gpus: int = 1, params: int | None = None) -> float:
    """Training tokens per second from a GPU's nominal throughput (hubtune.gpus; None: a CPU): 6 (8 with
    gradient checkpointing) x parameters FLOPs per token, at the share of the nominal figure fine-tuning
    reaches (MFU). A figure from the data sheet, not a measurement."""
    params = params or _parameters(config.model)
    flops_per_token = (8 if config.training.gradient_checkpointing is True else 6) * params  # auto: off when it fits
    method = "lora" if config.model.quantization == "none" else "qlora"
    return (gpu.tflops if gpu else CPU_TFLOPS) * 1e12 * gpus * MFU[method] / flops_per_token


def _timeout_for(estimate: RunEstimate, timeout: str | int | None) -> int:
    """The asked timeout, if it covers the estimate; else an error. Without one: 1.5 x the estimate, in
    whole quarter hours, never under the Jobs default."""
    if timeout is None:
        return max(JOBS_DEFAULT_TIMEOUT, math.ceil(estimate.seconds * 1.5 / 900) * 900)
    seconds = parse_duration(timeout)
    if seconds < estimate.seconds:
        raise JobError(f"--timeout {timeout} is shorter than the estimated run ({estimate.describe()}); the job "
                       f"would stop before the end and only the last mirrored checkpoint would remain. Give "
                       f"--timeout {duration(estimate.seconds * 1.5, ceil=True)}, a larger flavor, or fewer "
                       f"training.max_steps")
    return seconds


def parse_duration(value: str | int) -> int:
    """`90`, `90s`, `45m`, `6h`, `1d` -> seconds, as the Jobs API reads them."""
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
    if not m:
        raise JobError(f"--timeout {value!r}: give a duration like 90m, 6h or 1d")
    return int(float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])


def duration(seconds: float, ceil: bool = False) -> str:
    minutes = math.ceil(seconds / 60) if ceil else max(round(seconds / 60), 1)
    if minutes < 60:
        return f"{minutes}m"
    hours, rest = divmod(minutes, 60)
    if ceil and rest:
        return f"{hours + 1}h"
    return f"{hours}h{rest:02d}m" if rest else f"{hours}h"


def _training_rows(config: cfg.RunConfig) -> int:
    """Rows the training split will hold, from the files (built-in data) or the Hub cards' dataset_info."""
    total = 0
    for source in config.data.sources:
        n = _rows_of(source)
        if n is None:
            raise JobError(f"cannot estimate how long the run takes: the number of rows of {source.path} is unknown "
                           f"(its card has no dataset_info for split {source.split!r}). Set training.max_steps, or give "
                           f"--timeout")
        total += n
    v = config.data.val_set_size
    total = total - int(v) if v >= 1 else int(total * (1 - v))
    if config.data.mix.ratio > 0:
        total = int(total / (1 - config.data.mix.ratio))
    return max(total, 1)


def _rows_of(source: cfg.DataSource) -> int | None:
    ref = RepoRef.parse(source.path)
    if ref.is_local:
        path = ref.path
        files = [path] if path.is_file() else sorted(path.glob("*.jsonl"))
        rows = sum(1 for f in files if f.suffix == ".jsonl" for line in f.open() if line.strip())
        return _sliced(source, rows) or None
    from huggingface_hub import HfApi

    from hubtune.hub import hub_errors, token

    with hub_errors(source.path, "dataset", source.revision):
        info = HfApi(token=token()).dataset_info(source.path, revision=source.revision)
    card = info.card_data.to_dict() if info.card_data else {}
    infos = card.get("dataset_info") or []
    for entry in infos if isinstance(infos, list) else [infos]:
        if source.name and entry.get("config_name") not in (source.name, None):
            continue
        for split in entry.get("splits") or []:
            if split.get("name") == source.split_name and split.get("num_examples"):
                return _sliced(source, int(split["num_examples"]))
    return None


def _sliced(source: cfg.DataSource, rows: int) -> int:
    """How many of a split's rows a sliced split (train[:20%]) takes."""
    from hubtune.data.sources import slice_bounds

    start, stop = slice_bounds(source, rows) if source.split_slice else (0, rows)
    return max(stop - start, 0)


def _parameters(model: cfg.ModelSection) -> int:
    """The base's parameters, from its config.json alone (hubtune.memory's count)."""
    from hubtune import memory

    return memory.parameter_count(memory.read_config(model.id, model.revision)[0])


# ---- following a job ----------------------------------------------------------------------------------------
def status(job_id: str, namespace: str | None = None, token: str | None = None):
    """The job's JobInfo (stage, message, flavor, url)."""
    from huggingface_hub import HfApi

    with _job_errors(job_id):
        return HfApi(token=token).inspect_job(job_id=job_id, namespace=namespace)


def logs(job_id: str, follow: bool = False, tail: int | None = None, namespace: str | None = None,
         token: str | None = None) -> Iterable[str]:
    from huggingface_hub import HfApi

    with _job_errors(job_id):
        yield from HfApi(token=token).fetch_job_logs(job_id=job_id, follow=follow, tail=tail, namespace=namespace)


def cancel(job_id: str, namespace: str | None = None, token: str | None = None) -> None:
    from huggingface_hub import HfApi

    with _job_errors(job_id):
        HfApi(token=token).cancel_job(job_id=job_id, namespace=namespace)


@contextmanager
def _job_errors(job_id: str):
    """The client's HTTP errors about one job, as JobError with the fix."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as err:
        code = err.response.status_code if err.response is not None else None
        if code == 404:
            raise JobError(f"no job {job_id} in this namespace: check the id (`hubtune train ... --on hf-jobs` "
                           f"printed it) and --namespace") from None
        if code in (401, 403):
            raise JobError(f"the token may not read job {job_id} ({code}); use the token that submitted it "
                           f"(HF_TOKEN or `hf auth login`)") from None
        raise JobError(f"the Hub refused the request for job {job_id} ({code}: {err})") from None
