"""The licence gate: what a base model's and its datasets' licences permit, before training and
before publishing.

Each repo's licence comes from its card metadata (`license`, `license_name`, `license_link`) and
its gated flag from the repo info. `LICENCES` maps a licence to what it permits; the verdict for
a declared use (personal | research | commercial) is `allow`, `warn` or `block`, with the reasons
and the obligations the model card must carry. An unknown licence is a `warn` that needs an
explicit acknowledgement (`licence.acknowledge` in the run config) before training or pushing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from hubtune.errors import LicenceBlocked, NamingRuleError

USES = ("personal", "research", "commercial")
ALL = frozenset(USES)
NON_COMMERCIAL = frozenset({"personal", "research"})
SEVERITY = {"allow": 0, "warn": 1, "block": 2}
HUBTUNE_LICENCE = "apache-2.0"  # the package's own licence covers its embedded assets

LLAMA_CAP = "700 million monthly active users (above that, a licence from Meta is required)"
QWEN_CAP = "100 million monthly active users (above that, a licence from Alibaba Cloud is required)"


@dataclass(frozen=True)
class Terms:
    """One licence: what it permits and what a derivative must carry. `{repo}` in a notice is the repo id."""

    id: str
    name: str
    link: str | None
    uses: frozenset[str] = ALL  # declared uses it permits
    commercial_cap: str | None = None  # a user-count ceiling on commercial use
    derivatives: bool = True  # an adapter trained on it may be published
    share_alike: bool = False  # derivatives must carry the same licence
    notices: tuple[str, ...] = ()  # attribution and notices to carry on the card
    name_rule: tuple[str, str] | None = None  # (regex a derivative's name must match, the rule in words)
    use_policy: str | None = None  # use restrictions that must be passed on (link)
    attribution: str | None = None  # the words a derivative must display ("Built with Llama")


def _cc(id_: str, name: str, version: str, uses=ALL, share_alike=False, derivatives=True) -> Terms:
    slug = id_.removeprefix("cc-").rsplit("-", 1)[0]
    return Terms(id_, name, f"https://creativecommons.org/licenses/{slug}/{version}/", uses=uses,
                 share_alike=share_alike, derivatives=derivatives,
                 notices=(f"Credit {{repo}} ({name}): name the creator, link the licence and say what was changed.",))


def _llama(id_: str, title: str, licence_link: str, policy: str, built_with: str, name_rule: tuple[str, str],
           extra: tuple[str, ...] = ()) -> Terms:
    return Terms(id_, f"{title} Community License", licence_link, commercial_cap=LLAMA_CAP,
                 notices=(f'Display "{built_with}" prominently on the card and in any product using the adapter.',
                          f"Include a copy of the {title} Community License ({licence_link}) with the adapter.",
                          f'Carry the notice: "{title} is licensed under the {title} Community License, '
                          f'Copyright © Meta Platforms, Inc. All Rights Reserved."') + extra,
                 name_rule=name_rule, use_policy=policy, attribution=built_with)


_META = "https://github.com/meta-llama/llama-models/blob/main/models"
_EU_MULTIMODAL = ("The multimodal models' rights are not granted to individuals or companies based in the EU "
                  "(see the licence's use policy).",)
_LLAMA_NAME = (r"^Llama", 'its name must begin with "Llama"')

LICENCES: dict[str, Terms] = {t.id: t for t in [
    Terms("apache-2.0", "Apache License 2.0", "https://www.apache.org/licenses/LICENSE-2.0",
          notices=("Keep the Apache-2.0 licence text and any NOTICE file of {repo}, and say what was changed.",)),
    Terms("mit", "MIT License", "https://opensource.org/license/mit",
          notices=("Keep the copyright notice and MIT licence text of {repo}.",)),
    Terms("bsd-2-clause", "BSD 2-Clause License", "https://opensource.org/license/bsd-2-clause",
          notices=("Keep the copyright notice and BSD licence conditions of {repo}.",)),
    Terms("bsd-3-clause", "BSD 3-Clause License", "https://opensource.org/license/bsd-3-clause",
          notices=("Keep the copyright notice and BSD licence conditions of {repo}; do not use its authors' "
                   "names to endorse the adapter.",)),
    Terms("cc0-1.0", "CC0 1.0 Universal", "https://creativecommons.org/publicdomain/zero/1.0/"),
    _cc("cc-by-4.0", "CC BY 4.0", "4.0"),
    _cc("cc-by-sa-3.0", "CC BY-SA 3.0", "3.0", share_alike=True),
    _cc("cc-by-sa-4.0", "CC BY-SA 4.0", "4.0", share_alike=True),
    _cc("cc-by-nc-4.0", "CC BY-NC 4.0", "4.0", uses=NON_COMMERCIAL),
    _cc("cc-by-nc-sa-4.0", "CC BY-NC-SA 4.0", "4.0", uses=NON_COMMERCIAL, share_alike=True),
    _cc("cc-by-nd-4.0", "CC BY-ND 4.0", "4.0", derivatives=False),
    _cc("cc-by-nc-nd-4.0", "CC BY-NC-ND 4.0", "4.0", uses=NON_COMMERCIAL, derivatives=False),
    Terms("odc-by", "Open Data Commons Attribution License 1.0", "https://opendatacommons.org/licenses/by/1-0/",
          notices=("Attribute {repo} as the ODC-By licence requires and keep its notices.",)),
    Terms("llama2", "Llama 2 Community License", "https://ai.meta.com/llama/license/", commercial_cap=LLAMA_CAP,
          notices=("Include a copy of the Llama 2 Community License (https://ai.meta.com/llama/license/) "
                   "with the adapter.",
                   'Carry the notice: "Llama 2 is licensed under the LLAMA 2 Community License, Copyright (c) Meta '
                   'Platforms, Inc. All Rights Reserved."',
                   "Do not use Llama 2 or its outputs to improve any other large language model than Llama 2 "
                   "and its derivatives."),
          use_policy="https://ai.meta.com/llama/use-policy/"),
    _llama("llama3", "Meta Llama 3", "https://llama.meta.com/llama3/license/",
           "https://llama.meta.com/llama3/use-policy/", "Built with Meta Llama 3",
           (r"^Llama[-_. ]?3", 'its name must begin with "Llama 3" (e.g. Llama-3-...)')),
    _llama("llama3.1", "Llama 3.1", f"{_META}/llama3_1/LICENSE", "https://llama.meta.com/llama3_1/use-policy",
           "Built with Llama", _LLAMA_NAME),
    _llama("llama3.2", "Llama 3.2", f"{_META}/llama3_2/LICENSE", f"{_META}/llama3_2/USE_POLICY.md",
           "Built with Llama", _LLAMA_NAME, _EU_MULTIMODAL),
    _llama("llama3.3", "Llama 3.3", f"{_META}/llama3_3/LICENSE", f"{_META}/llama3_3/USE_POLICY.md",
           "Built with Llama", _LLAMA_NAME),
    _llama("llama4", "Llama 4", f"{_META}/llama4/LICENSE", f"{_META}/llama4/USE_POLICY.md",
           "Built with Llama", _LLAMA_NAME, _EU_MULTIMODAL),
    Terms("gemma", "Gemma Terms of Use", "https://ai.google.dev/gemma/terms",
          notices=('Carry the notice: "Gemma is provided under and subject to the Gemma Terms of Use found at '
                   'ai.google.dev/gemma/terms".',
                   "Pass the Gemma Terms of Use and its use restrictions on to everyone you share the adapter with.",
                   "Mark the adapter as a modification of {repo}."),
          use_policy="https://ai.google.dev/gemma/prohibited_use_policy"),
    Terms("openrail", "Open RAIL License", "https://huggingface.co/blog/open_rail",
          notices=("Include the licence of {repo} and its use restrictions in the adapter's licence.",),
          use_policy="the use restrictions of the Open RAIL licence of {repo}"),
    Terms("openrail++", "CreativeML Open RAIL++-M License",
          "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/LICENSE.md",
          notices=("Include the licence of {repo} and its use restrictions (Attachment A) in the adapter's licence.",),
          use_policy="Attachment A of the Open RAIL++-M licence of {repo}"),
    Terms("bigscience-bloom-rail-1.0", "BigScience BLOOM RAIL 1.0", "https://huggingface.co/spaces/bigscience/license",
          notices=("Include the licence of {repo} and its use restrictions (Attachment A) in the adapter's licence.",),
          use_policy="Attachment A of the BigScience BLOOM RAIL 1.0 licence"),
    Terms("creativeml-openrail-m", "CreativeML Open RAIL-M", "https://huggingface.co/spaces/CompVis/stable-diffusion-license",
          notices=("Include the licence of {repo} and its use restrictions (Attachment A) in the adapter's licence.",),
          use_policy="Attachment A of the CreativeML Open RAIL-M licence"),
    Terms("qwen", "Qwen License Agreement", "https://huggingface.co/Qwen/Qwen2.5-72B-Instruct/blob/main/LICENSE",
          commercial_cap=QWEN_CAP, attribution="Built with Qwen",
          notices=('Display "Built with Qwen" or "Improved using Qwen" in the adapter\'s documentation.',
                   "Include a copy of the Qwen License Agreement with the adapter.")),
    Terms("qwen-research", "Qwen Research License Agreement",
          "https://huggingface.co/Qwen/Qwen2.5-3B-Instruct/blob/main/LICENSE", uses=NON_COMMERCIAL,
          attribution="Built with Qwen",
          notices=('Display "Built with Qwen" or "Improved using Qwen" in the adapter\'s documentation.',
                   "Include a copy of the Qwen Research License Agreement with the adapter.")),
]}

# `license: other` with a `license_name` the Hub does not list itself.
OTHER_NAMES = {"qwen": "qwen", "tongyi-qianwen": "qwen", "qwen-research": "qwen-research",
               "tongyi-qianwen-research": "qwen-research"}


def lookup(licence: str | None, license_name: str | None = None) -> Terms | None:
    """The terms of a card's licence, or None when hubtune does not know it."""
    key = (licence or "").strip().lower()
    if key == "other" and license_name:
        key = OTHER_NAMES.get(license_name.strip().lower(), "")
    return LICENCES.get(key)


@dataclass
class RepoLicence:
    """What the gate read about one repo (a base model or a dataset)."""

    ref: str  # repo id or path, as configured
    repo_type: str  # "model" or "dataset"
    source: str  # "hub", "local" or "builtin"
    licences: list[str]  # the card's `license` (a dataset card may list several)
    license_name: str | None = None
    license_link: str | None = None
    gated: bool | str | None = False
    revision_sha: str | None = None

    @property
    def terms(self) -> list[Terms | None]:
        return [lookup(lic, self.license_name) for lic in self.licences] or [None]

    @property
    def licence(self) -> str:
        shown = ", ".join(self.licences) or "missing"
        return f"{shown} ({self.license_name})" if self.license_name and "other" in self.licences else shown


@dataclass
class Finding:
    repo: RepoLicence
    verdict: str = "allow"
    reasons: list[str] = field(default_factory=list)
    obligations: list[str] = field(default_factory=list)
    needs_acknowledgement: bool = False
    name_rules: list[tuple[str, str]] = field(default_factory=list)
    attributions: list[str] = field(default_factory=list)

    def raise_to(self, verdict: str, reason: str) -> None:
        self.reasons.append(reason)
        if SEVERITY[verdict] > SEVERITY[self.verdict]:
            self.verdict = verdict


@dataclass
class Verdict:
    """The gate's answer for a model and its datasets under one declared use."""

    use: str
    publish: bool
    findings: list[Finding]

    @property
    def verdict(self) -> str:
        return max((f.verdict for f in self.findings), key=SEVERITY.__getitem__, default="allow")

    @property
    def reasons(self) -> list[str]:
        return [r for f in self.findings for r in f.reasons]

    @property
    def obligations(self) -> list[str]:
        return list(dict.fromkeys(o for f in self.findings for o in f.obligations))

    @property
    def attributions(self) -> list[str]:
        """What the card and any product must display, e.g. "Built with Llama"."""
        return list(dict.fromkeys(a for f in self.findings for a in f.attributions))

    @property
    def name_rules(self) -> list[tuple[str, str, str]]:
        """(repo, regex, rule in words) for each naming rule a derivative must follow."""
        return [(f.repo.ref, pattern, words) for f in self.findings for pattern, words in f.name_rules]

    def unacknowledged(self, acknowledge: list[str] | tuple[str, ...] = ()) -> list[Finding]:
        """Findings that stop a run: a block, or an unknown licence, not listed in `acknowledge`."""
        return [f for f in self.findings
                if (f.verdict == "block" or f.needs_acknowledgement) and f.repo.ref not in acknowledge]

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict, "use": self.use, "publish": self.publish,
            "reasons": self.reasons, "obligations": self.obligations,
            "repos": [{"repo": f.repo.ref, "type": f.repo.repo_type, "source": f.repo.source,
                       "licence": f.repo.licence, "license_name": f.repo.license_name,
                       "license_link": f.repo.license_link, "gated": f.repo.gated,
                       "revision": f.repo.revision_sha, "verdict": f.verdict, "reasons": f.reasons,
                       "obligations": f.obligations, "needs_acknowledgement": f.needs_acknowledgement}
                      for f in self.findings],
            "name_rules": [{"repo": r, "pattern": p, "rule": w} for r, p, w in self.name_rules],
            "attributions": self.attributions,
        }


def read_licence(ref: str, repo_type: str = "model", revision: str | None = None) -> RepoLicence:
    """Licence metadata of a Hub repo (card + gated flag), a local folder/file (its README.md front
    matter), or a `hubtune:` asset (its README.md, else the package's own licence)."""
    from hubtune import hub
    from hubtune.refs import RepoRef

    parsed = RepoRef.parse(ref)
    if parsed.is_local:
        folder = parsed.path if parsed.path.is_dir() else parsed.path.parent
        meta = hub.read_card_metadata(folder / "README.md")
        if meta is None and parsed.kind == "builtin":
            return RepoLicence(ref, repo_type, "builtin", [HUBTUNE_LICENCE])
        return _from_metadata(ref, repo_type, parsed.kind, meta or {}, False, None)
    card = hub.repo_card(ref, repo_type, revision)
    return _from_metadata(ref, repo_type, "hub", card.metadata, card.gated, card.revision_sha)


def _from_metadata(ref, repo_type, source, meta: dict, gated, sha) -> RepoLicence:
    raw = meta.get("license")
    licences = [str(x) for x in raw] if isinstance(raw, list) else [str(raw)] if raw else []
    return RepoLicence(ref, repo_type, source, licences, meta.get("license_name"), meta.get("license_link"), gated, sha)


def _finding(repo: RepoLicence, use: str, publish: bool) -> Finding:
    from hubtune.hub import hub_url

    f = Finding(repo)
    role = "dataset" if repo.repo_type == "dataset" else "base model"
    for lic, terms in zip(repo.licences or [None], repo.terms):
        if terms is None:
            if repo.source == "hub" or publish:
                f.needs_acknowledgement = True
                f.raise_to("warn", f"{repo.ref}: licence {repo.licence!r} is not one hubtune knows; read it "
                                   f"yourself, then add {repo.ref!r} to licence.acknowledge to proceed")
            else:
                f.raise_to("warn", f"{repo.ref}: local {role} without licence metadata (no README.md with "
                                   f"`license:`); make sure you may use it")
            continue
        label = f"{repo.ref} ({role}, {terms.name})"
        if use not in terms.uses:
            inherits = "; the adapter inherits that restriction" if repo.repo_type == "dataset" else ""
            f.raise_to("block", f"{label} does not permit {use} use{inherits}")
        if publish and not terms.derivatives:
            f.raise_to("block", f"{label} does not permit publishing derivatives, so the adapter cannot be pushed")
        if "commercial" not in terms.uses:
            f.obligations.append(f"Not for commercial use: trained with {repo.ref}, licensed {terms.name}.")
        if use == "commercial" and terms.commercial_cap:
            f.obligations.append(f"Commercial use of {repo.ref} is licensed only below {terms.commercial_cap}.")
        if terms.share_alike:
            f.raise_to("warn", f"{label} is share-alike: if the adapter is an adaptation of it, it must be shared "
                               f"under the same licence")
            f.obligations.append(f"Share-alike: publish the adapter under {terms.name} if it adapts {repo.ref}.")
        f.obligations += [n.format(repo=repo.ref) for n in terms.notices]
        if terms.attribution:
            f.attributions.append(terms.attribution)
        if terms.use_policy:
            policy = terms.use_policy.format(repo=repo.ref)
            f.obligations.append(f"Pass on the use restrictions of {repo.ref}: {policy}")
        if terms.name_rule and repo.repo_type == "model":
            f.name_rules.append(terms.name_rule)
            f.obligations.append(f"Naming: a derivative of {repo.ref} is published under a name that "
                                 f"{terms.name_rule[1].removeprefix('its name ')}.")
    if repo.gated:
        f.obligations.append(f"{repo.ref} is gated: its users accept its terms on {hub_url(repo.ref, repo.repo_type)}.")
    if not f.reasons:
        f.reasons.append(f"{repo.ref} ({role}, {repo.licence}) permits {use} use"
                         + (" and publishing an adapter" if publish else ""))
    return f


def licence_verdict(model: RepoLicence, datasets: list[RepoLicence], use: str = "personal",
                    publish: bool = False) -> Verdict:
    """Combine the base model's and the datasets' licences for a declared use."""
    if use not in USES:
        raise ValueError(f"use must be one of {', '.join(USES)}, got {use!r}")
    return Verdict(use, publish, [_finding(r, use, publish) for r in [model, *datasets]])


def check(model: str, datasets: list[str] | tuple[str, ...] = (), use: str = "personal",
          revision: str | None = None, publish: bool = False) -> Verdict:
    """Read the licences of a model and datasets (Hub ids or paths) and give the verdict."""
    return licence_verdict(read_licence(model, "model", revision),
                           [read_licence(d, "dataset") for d in datasets], use, publish)


def _stop(verdict: Verdict, findings: list[Finding], doing: str) -> LicenceBlocked:
    lines = [f"licence gate: {doing} stopped for {verdict.use} use:"]
    lines += [f"  - {r}" for f in findings for r in f.reasons if f.verdict != "allow"]
    refs = ", ".join(repr(f.repo.ref) for f in findings)
    how = (f"licence.acknowledge=[{refs}] in the run config" if doing == "training" else
           " ".join(f"--acknowledge {f.repo.ref}" for f in findings) + " on `hubtune push`")
    lines.append(f"Fix: declare a use these licences permit (licence.use), use other repos, or, if you hold a "
                 f"licence that covers it, acknowledge it explicitly: {how}")
    return LicenceBlocked("\n".join(lines), verdict)


def gate_for_training(config) -> Verdict:
    """Run before weights are loaded: raise LicenceBlocked on a block or an unknown licence that
    the config does not acknowledge; otherwise return the verdict for the summary and the card."""
    verdict = licence_verdict(read_licence(config.model.id, "model", config.model.revision),
                              [read_licence(s.path, "dataset", s.revision) for s in config.data.sources],
                              config.licence.use)
    stopping = verdict.unacknowledged(config.licence.acknowledge)
    if stopping:
        raise _stop(verdict, stopping, "training")
    return verdict


def gate_for_publishing(model: RepoLicence, datasets: list[RepoLicence], use: str,
                        acknowledge: list[str], repo_id: str) -> Verdict:
    """Run before a push: the licences must permit publishing and the repo name must follow their naming rules."""
    verdict = licence_verdict(model, datasets, use, publish=True)
    stopping = verdict.unacknowledged(acknowledge)
    if stopping:
        raise _stop(verdict, stopping, "publishing")
    name = repo_id.split("/")[-1]
    for ref, pattern, words in verdict.name_rules:
        if not re.match(pattern, name):
            raise NamingRuleError(
                f"cannot publish {repo_id}: it derives from {ref}, whose licence says {words}. "
                f"Push to a repo named like {repo_id.split('/')[0]}/{_suggest(pattern, name)} instead.", verdict)
    return verdict


def _suggest(pattern: str, name: str) -> str:
    rest = re.sub(r"(?i)^llama[-_. ]?", "", name)
    if "3" in pattern and not rest.startswith("3"):
        rest = f"3-{rest}"
    return f"Llama-{rest}"


def format_table(verdict: Verdict) -> str:
    """The verdict as a plain-text table, then its reasons and obligations."""
    rows = [("repo", "type", "licence", "gated", "verdict")]
    rows += [(f.repo.ref, f.repo.repo_type, f.repo.licence, str(f.repo.gated or "no"), f.verdict)
             for f in verdict.findings]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", f"verdict: {verdict.verdict} (use: {verdict.use})", "reasons:"]
    lines += [f"  - {r}" for r in verdict.reasons]
    if verdict.obligations:
        lines.append("obligations:")
        lines += [f"  - {o}" for o in verdict.obligations]
    pending = [f.repo.ref for f in verdict.findings if f.needs_acknowledgement]
    if pending:
        lines.append(f"to train or push anyway, acknowledge: licence.acknowledge=[{', '.join(map(repr, pending))}]")
    return "\n".join(lines)
