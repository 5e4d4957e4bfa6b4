"""The licence gate: what a base model's and its datasets' licences permit, before training and
before publishing.

Each repo's licence comes from its card metadata (`license`, `license_name`, `license_link`), its
gated flag from the repo info, and for a gated repo the token's actual access. `hubtune.licence_terms`
holds what each licence permits; here the rules turn that into a verdict for a declared use
(personal | research | commercial): `allow`, `warn` or `block`, with reasons that cite the clause
they come from and the obligations the model card must carry.

Two kinds of stop, and one way through each:
- a licence hubtune does not know needs an explicit acknowledgement (`licence.acknowledge`), which
  accepts its unknown text;
- a block needs the same acknowledgement, which says you hold a licence that covers the use.
An id hubtune does not know but whose family it does (`cc-by-nc-2.1`) is read as its family; the
acknowledgement then accepts the unknown text only: the family's own restriction (non-commercial,
research only, no derivatives) stays a block, so a non-commercial licence is never acknowledged into
a commercial use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from hubtune.errors import HubtuneError, LicenceBlocked, NamingRuleError
from hubtune.licence_terms import (  # noqa: F401  (re-exported: the licence data lives there)
    ALL,
    LICENCES,
    MULTIMODAL_TASKS,
    NON_COMMERCIAL,
    USES,
    NameRule,
    Terms,
    family_terms,
    licence_table,
    lookup,
)
from hubtune.licence_texts import CardReading, Clause

SEVERITY = {"allow": 0, "warn": 1, "conditional": 2, "block": 3}
MAX_DEPTH = 8  # ancestors followed through `base_model`; deeper ones are reported, not read
# Hub `base_model_relation` values (and "distill", which cards say in words) as the chain shows them.
RELATIONS = {"finetune": "fine-tuned from", "adapter": "an adapter of", "merge": "merged from",
             "quantized": "quantized from", "distill": "distilled from", "card text": "derived from"}
HUBTUNE_LICENCE = "apache-2.0"  # the package's own licence covers its embedded assets


@dataclass
class RepoLicence:
    """What the gate read about one repo (a base model or a dataset)."""

    ref: str  # repo id as configured; a local data file by its name (refs.data_label), never its path
    repo_type: str  # "model" or "dataset"
    source: str  # "hub", "local" or "builtin"
    licences: list[str]  # the card's `license` (a dataset card may list several)
    license_name: str | None = None
    license_link: str | None = None
    gated: bool | str | None = False
    revision_sha: str | None = None
    pipeline_tag: str | None = None  # the card's task; tells a multimodal model from a text one
    eu_disallowed: bool = False  # the card's `extra_gated_eu_disallowed`: the gate refuses EU users
    access: str | None = None  # gated Hub repo: "granted", "denied" or "no token"; None when not checked
    path: str | None = None  # where local data was read (a path on this machine): for matching, never shown
    sha256: str | None = None  # a local data file's content hash
    declared: dict | None = None  # the uploader's rights declaration {file, sha256, by, at} covering these bytes
    text_licences: list[tuple[str, str]] = field(default_factory=list)  # (licence id, file) known by its text
    clauses: list[Clause] = field(default_factory=list)  # decisive clauses of texts hubtune does not know
    card: CardReading | None = None  # what the card's prose says about licences
    files: list[str] = field(default_factory=list)  # the licence texts read, at `revision_sha`
    unread: list[str] = field(default_factory=list)  # texts that exist but could not be read, and why
    parents: list[Link] = field(default_factory=list)  # the card's `base_model`s, read in turn

    def ancestors(self) -> list[tuple[str, RepoLicence]]:
        """Every ancestor read, depth first, with how it relates to this repo ("fine-tuned from X")."""
        out = []
        for link in self.parents:
            if link.parent is not None:
                out.append((f"{RELATIONS.get(link.relation, link.relation)} {self.ref}", link.parent))
                out += link.parent.ancestors()
        return out

    def chains(self) -> list[str]:
        """The lineage as lines: "a/b (mit) ← derived from meta-llama/Llama-3.1-8B (llama3.1)". A sentence
        that several generations' cards repeat is shown once, on the shortest line."""
        lines = self._chains()
        said = ", the card says: "
        shortest: dict[str, str] = {}
        for line in lines:
            if said in line:
                quote = line.split(said, 1)[1]
                if quote not in shortest or len(line) < len(shortest[quote]):
                    shortest[quote] = line
        return [ln for ln in lines if said not in ln or shortest[ln.split(said, 1)[1]] == ln]

    def _chains(self) -> list[str]:
        head = f"{self.ref} ({self.licence})"
        lines = []
        for link in self.parents:
            rel = RELATIONS.get(link.relation, link.relation)
            if link.parent is not None:
                tails = link.parent._chains() or [f"{link.parent.ref} ({link.parent.licence})"]
                lines += [f"{head} ← {rel} {tail}" for tail in tails]
            else:
                lines.append(f"{head} ← {rel} {link.ref} (not read: {link.note})")
        for claim in self.card.claims if self.card else []:
            if claim.kind == "lineage":
                lines.append(f"{head} ← derived from ({', '.join(claim.licences)}), the card says: \"{claim.quote}\"")
        return lines

    @property
    def terms(self) -> list[Terms | None]:
        return [lookup(lic, self.license_name) for lic in self.licences] or [None]

    @property
    def licence(self) -> str:
        if self.declared and not self.licences:
            return "declared by the uploader"
        shown = ", ".join(self.licences) or "missing"
        return f"{shown} ({self.license_name})" if self.license_name and "other" in self.licences else shown


@dataclass
class Link:
    """One `base_model` of a card: the parent as read, or why it was not."""

    relation: str  # finetune, adapter, merge, quantized, distill
    ref: str
    parent: RepoLicence | None
    note: str | None = None  # why the parent was not read (not found, gated, a cycle, the depth limit)


@dataclass
class Hit:
    """One rule that fired on a repo."""

    rule: str  # what the rule is about, e.g. "outputs-improve-other-models"
    verdict: str
    reason: str  # what `hubtune check` prints, ending with the clause in brackets
    clause: str | None  # the licence and clause, e.g. "Llama 2 §1.b.v"
    hard: bool = False  # rests on the licence's words (its text, card text, family reading): not acknowledgeable


@dataclass
class Finding:
    repo: RepoLicence
    verdict: str = "allow"
    hits: list[Hit] = field(default_factory=list)
    obligations: list[str] = field(default_factory=list)
    needs_acknowledgement: bool = False
    name_rules: list[tuple[NameRule, str]] = field(default_factory=list)  # (rule, its citation)
    attributions: list[str] = field(default_factory=list)
    terms: list[Terms] = field(default_factory=list)  # what the repo's licences (and its ancestors') were read as
    conditions: list[str] = field(default_factory=list)  # actions the user confirms, each ending with its clause
    applied: dict[str, bool] = field(default_factory=dict)  # licence id -> applied as resting on its text

    @property
    def reasons(self) -> list[str]:
        return [h.reason for h in self.hits]

    def raise_to(self, verdict: str, reason: str, rule: str = "note", clause: str | None = None,
                 hard: bool = False, cited: bool = False) -> None:
        """Record a rule that fired; the reason ends with its clause unless it `cited` it already."""
        self.hits.append(Hit(rule, verdict, f"{reason} [{clause}]" if clause and not cited else reason, clause, hard))
        if SEVERITY[verdict] > SEVERITY[self.verdict]:
            self.verdict = verdict

    def oblige(self, text: str, clause: str | None = None) -> None:
        self.obligations.append(f"{text} [{clause}]" if clause else text)

    def condition(self, text: str, clause: str, label: str) -> None:
        """Allowed once the user does something: a verdict of its own, confirmed by acknowledging the repo."""
        line = f"{text} [{clause}]"
        if line not in self.conditions:
            self.conditions.append(line)
            self.raise_to("conditional", f"{label}: allowed once you confirm: {line}", "condition", clause, cited=True)

    @property
    def hard_block(self) -> bool:
        return any(h.hard and h.verdict == "block" for h in self.hits)


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
    def conditions(self) -> list[str]:
        return list(dict.fromkeys(c for f in self.findings for c in f.conditions))

    @property
    def attributions(self) -> list[str]:
        """What the card and any product must display, e.g. "Built with Llama"."""
        return list(dict.fromkeys(a for f in self.findings for a in f.attributions))

    @property
    def name_rules(self) -> list[tuple[str, str, str, str]]:
        """(repo, regex, rule in words, clause) for each naming rule a derivative must follow."""
        return list(dict.fromkeys((f.repo.ref, r.pattern, r.words, cite)
                                  for f in self.findings for r, cite in f.name_rules))

    def unacknowledged(self, acknowledge: list[str] | tuple[str, ...] = ()) -> list[Finding]:
        """Findings that stop a run: a block, an unknown licence or a condition not listed in
        `acknowledge`, and a block that rests on a licence's text (or a family reading) whether listed
        or not."""
        return [f for f in self.findings if f.hard_block
                or ((f.verdict == "block" or f.needs_acknowledgement or f.conditions)
                    and not acknowledged(f.repo, acknowledge))]

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict, "use": self.use, "publish": self.publish,
            "reasons": self.reasons, "obligations": self.obligations, "conditions": self.conditions,
            "repos": [{"repo": f.repo.ref, "type": f.repo.repo_type, "source": f.repo.source,
                       "licence": f.repo.licence, "license_name": f.repo.license_name,
                       "license_link": f.repo.license_link, "gated": f.repo.gated, "access": f.repo.access,
                       "revision": f.repo.revision_sha, "sha256": f.repo.sha256, "declared": f.repo.declared,
                       "verdict": f.verdict, "reasons": f.reasons,
                       "rules": [{"rule": h.rule, "verdict": h.verdict, "clause": h.clause, "reason": h.reason}
                                 for h in f.hits],
                       "read_as": [t.reading or t.id for t in f.terms],
                       "obligations": f.obligations, "conditions": f.conditions,
                       "needs_acknowledgement": f.needs_acknowledgement,
                       "lineage": f.repo.chains(), "ancestors": [
                           {"repo": a.ref, "relation": rel, "licence": a.licence, "revision": a.revision_sha,
                            "licence_files": a.files} for rel, a in f.repo.ancestors()],
                       "licence_files": f.repo.files,
                       "read_from_text": [{"licence": i, "file": src} for i, src in f.repo.text_licences],
                       "clauses": [{"kind": c.kind, "quote": c.quote, "file": c.source} for c in f.repo.clauses]}
                      for f in self.findings],
            "name_rules": [{"repo": r, "pattern": p, "rule": w, "clause": c} for r, p, w, c in self.name_rules],
            "attributions": self.attributions,
        }


def acknowledged(repo: RepoLicence, acknowledge: list[str] | tuple[str, ...]) -> bool:
    """Whether `acknowledge` names this repo: by its id, or a local file by the name shown for it (or the
    path it was read from, as older configs wrote it)."""
    return repo.ref in acknowledge or (repo.path is not None and repo.path in acknowledge)


# ---- reading the licences --------------------------------------------------------------------
def dataset_licences(sources, declared=()) -> list[RepoLicence]:
    """The licences of every dataset that reaches training: `sources` are (DataSource or DatasetRecord,
    role) pairs, as `DataSection.trained_sources()` gives them; each local file carries the uploader's
    declaration (config.RightsDeclaration) that covers its bytes, if any."""
    out = []
    for s, _role in sources:
        found = read_licence(s.path, "dataset", getattr(s, "revision_sha", None) or s.revision)
        found.sha256 = getattr(s, "sha256", None) or found.sha256  # a run's record: the bytes it trained on
        match = [d for d in declared if found.sha256 and d.sha256 == found.sha256]
        found.declared = match[0].model_dump() if match else None
        out.append(found)
    return out


def read_licence(ref: str, repo_type: str = "model", revision: str | None = None,
                 _chain: tuple[str, ...] = (), pins: dict[str, str] | None = None) -> RepoLicence:
    """Licence metadata of a Hub repo (card, gated flag, the token's access to a gated repo), a local
    folder/file (its README.md front matter), or a `hubtune:` asset (its README.md, else the
    package's own licence); its licence texts and card prose at the same revision; and, for a model,
    its ancestors through the card's `base_model`, each read the same way (`_chain`: the repos below it,
    for the cycle guard and the depth limit), at the commit `pins` gives for it (a run records the commit
    each ancestor was read at, and a push reads them there again), else the one the Hub serves now. A
    pre-quantized base is judged by the original its card names (see `_prequantized_original`)."""
    from hubtune import hub
    from hubtune.refs import RepoRef

    parsed = RepoRef.parse(ref)
    if parsed.is_local:
        folder = parsed.path if parsed.path.is_dir() else parsed.path.parent
        meta = hub.read_card_metadata(folder / "README.md")
        if meta is None and parsed.kind == "builtin":
            return RepoLicence(ref, repo_type, "builtin", [HUBTUNE_LICENCE])
        quantized = _prequantized_original(ref, repo_type, meta or {}, revision)
        if quantized and not _chain:
            return read_licence(quantized, "model", None, (ref,))
        found = _from_metadata(ref, repo_type, parsed.kind, meta or {}, False, None)
        if parsed.path.is_dir() or (folder / "README.md").is_file():
            _read_texts(found, hub.folder_texts(folder, found.license_link) if parsed.path.is_dir()
                        else hub.RepoTexts((folder / "README.md").read_text(errors="replace"), {}, []))
        found.parents = _parents(meta or {}, found, _chain, "quantized" if quantized else None, pins)
        if repo_type == "dataset" and parsed.kind == "local":
            from hubtune.refs import data_label, file_sha256

            found.ref, found.path, found.sha256 = data_label(ref), ref, file_sha256(parsed.path)
        return found
    card = hub.repo_card(ref, repo_type, revision)
    # The base itself pre-quantized: judged as the original (its card, its files, its name rule). As an
    # ancestor, it stays a step of the chain ("quantized from ...").
    quantized = _prequantized_original(ref, repo_type, card.metadata, revision)
    if quantized and not _chain:
        return read_licence(quantized, "model", None, (ref,))
    found = _from_metadata(ref, repo_type, "hub", card.metadata, card.gated, card.revision_sha)
    if card.revision_sha or revision:
        _read_texts(found, hub.repo_texts(ref, repo_type, card.revision_sha or revision, found.license_link))
    if card.gated and not _chain:
        found.access = hub.gated_access(ref, repo_type)
    found.parents = _parents(card.metadata, found, _chain, "quantized" if quantized else None, pins)
    return found


def _read_texts(found: RepoLicence, texts) -> None:
    """Recognise the repo's licence files by their clauses, read the decisive clauses of those hubtune does
    not know, and read the card's prose."""
    from hubtune.licence_texts import decisive_clauses, read_card, recognise

    found.files = sorted(texts.files)
    found.unread = list(texts.unread)
    for name, text in sorted(texts.files.items()):
        known = recognise(text)
        found.text_licences += [(k, name) for k in known]
        # A NOTICE names a licence and a use policy lists forbidden acts: neither grants or limits a use.
        if not known and not name.upper().startswith(("NOTICE", "USE_POLICY")):
            found.clauses += decisive_clauses(text, name)
    if texts.readme:
        found.card = read_card(texts.readme, found.ref.rstrip("/").split("/")[-1])
        found.clauses += found.card.clauses


def _parents(meta: dict, child: RepoLicence, chain: tuple[str, ...], relation: str | None = None,
             pins: dict[str, str] | None = None) -> list[Link]:
    """The card's `base_model`s (one, or several for a merge), each read with its own ancestry, at its
    commit in `pins`, else the one the Hub serves now (recorded as the ancestor's revision either way)."""
    from hubtune.refs import is_hub_id

    if child.repo_type != "model":
        return []
    raw = meta.get("base_model")
    bases = [b.strip() for b in (raw if isinstance(raw, list) else [raw]) if isinstance(b, str) and b.strip()]
    relation = str(meta.get("base_model_relation") or relation or ("merge" if len(bases) > 1 else "finetune"))
    below = (*chain, child.ref)
    links = []
    for base in dict.fromkeys(bases):
        if base == child.ref or base in below:
            continue  # a card naming itself, or a cycle: the repo is judged already
        if not is_hub_id(base):
            links.append(Link(relation, base, None, "not a Hub repo id"))
        elif len(below) > MAX_DEPTH:
            links.append(Link(relation, base, None, f"deeper than {MAX_DEPTH} generations"))
        else:
            try:
                links.append(Link(relation, base, read_licence(base, "model", (pins or {}).get(base), below, pins)))
            except HubtuneError as err:
                links.append(Link(relation, base, None, str(err).split(": ", 1)[-1][:200]))
    return links


def _prequantized_original(ref: str, repo_type: str, meta: dict, revision: str | None) -> str | None:
    """A 4-bit copy of a model (unsloth/...-bnb-4bit) is that model under its licence: its rules,
    notices and name prefix come from the `base_model` its card names."""
    if repo_type != "model" or "base_model" not in meta:
        return None
    from hubtune.interop.prequantized import original_base

    return original_base(meta, ref, revision)


def _from_metadata(ref, repo_type, source, meta: dict, gated, sha) -> RepoLicence:
    raw = meta.get("license")
    licences = [str(x) for x in raw] if isinstance(raw, list) else [str(raw)] if raw else []
    return RepoLicence(ref, repo_type, source, licences, meta.get("license_name"), meta.get("license_link"), gated,
                       sha, pipeline_tag=meta.get("pipeline_tag"),
                       eu_disallowed=bool(meta.get("extra_gated_eu_disallowed")))


# ---- the rules, one repo at a time ------------------------------------------------------------
def _finding(repo: RepoLicence, use: str, publish: bool) -> Finding:
    f = Finding(repo)
    role = "dataset" if repo.repo_type == "dataset" else "base model"
    ancestors = repo.ancestors()
    # Card text naming a licence an ancestor's card or files already carry adds nothing but noise.
    covered = {_fam(t) for _, a in ancestors for t in _licences_of(a)}
    _judge(f, repo, use, publish, role, f"{repo.ref} ({role}, {{name}})", covered=covered)
    for how, ancestor in ancestors:
        _judge(f, ancestor, use, publish, "ancestor", f"{ancestor.ref} ({how}; {{name}})", ancestor=True,
               covered=covered)
    for link in _unread_links(repo):
        f.needs_acknowledgement = True
        f.raise_to("warn", f"{repo.ref}: its lineage names {link.ref} ({RELATIONS.get(link.relation, link.relation)}), "
                           f"whose licence could not be read ({link.note}); its terms bind this repo too: read them, "
                           f"then add {repo.ref!r} to licence.acknowledge", "lineage-unread", "card: base_model")
    _repo_rules(f, repo)
    return f


def _unread_links(repo: RepoLicence) -> list[Link]:
    out = [link for link in repo.parents if link.parent is None]
    for link in repo.parents:
        if link.parent is not None:
            out += _unread_links(link.parent)
    return out


def _fam(t: Terms) -> str:
    return t.family or t.id


def _licences_of(r: RepoLicence) -> list[Terms]:
    """The known licences a repo carries by its tag and its licence files."""
    tagged = [lookup(lic, r.license_name) for lic in r.licences]
    return [t for t in [*tagged, *(LICENCES.get(i) for i, _ in r.text_licences)] if t is not None]


def _judge(f: Finding, r: RepoLicence, use: str, publish: bool, role: str, label: str,
           ancestor: bool = False, covered: set[str] = frozenset()) -> None:
    """Apply everything `r` is licensed under (its tag, its licence texts, its card's prose) to `f`.
    `label` names the repo in reasons ("{name}" becomes the licence's name)."""
    tagged = []
    for lic in r.licences or [None]:
        terms = lookup(lic, r.license_name) or family_terms(lic, r.license_name)
        if terms is not None:
            tagged.append(terms)
    read = [(LICENCES[i], src) for i, src in r.text_licences if i in LICENCES]
    read += [(LICENCES[i], "card text") for i in (r.card.recognised if r.card else []) if i in LICENCES]
    owned = [(t, c.quote) for c in (r.card.claims if r.card else []) if c.kind == "own"
             for t in [lookup(i) or family_terms(i) for i in c.licences] if t is not None]
    read_families = {_fam(t) for t, _ in read}
    tag_families = {_fam(t) for t in tagged if not t.acknowledge or t.reading}

    for t in tagged:
        f.terms.append(t)
        if t.acknowledge and not (read and not t.reading):
            _to_acknowledge(f, r, t, publish)
        if any(_fam(x) == _fam(t) and x.id != t.id for x, _ in read):
            continue  # its licence file names the same licence more precisely (EXAONE 1.1-NC for `exaone`)
        if not t.acknowledge or t.reading:
            # A restriction its own licence text confirms rests on the text: it cannot be acknowledged away.
            _apply(f, t, use, publish, label.format(name=t.name),
                   hard=t.reading is not None or _fam(t) in read_families, ref=r.ref)
    if not tagged and not read and not owned:
        if r.clauses:
            f.needs_acknowledgement = True
            f.raise_to("warn", f"{r.ref}: licence {r.licence!r} is not one hubtune knows and neither is the text of "
                               f"{', '.join(dict.fromkeys(c.source for c in r.clauses))}; its decisive clauses are "
                               f"applied below; read the rest yourself, then add {f.repo.ref!r} to "
                               f"licence.acknowledge", "unknown-licence")
        elif r.declared:
            d = r.declared
            f.raise_to("allow", f"{r.ref} ({role}): {d.get('by') or 'its uploader'} declared at {d['at']} holding "
                                f"the rights to use and publish this file (sha256 {d['sha256'][:12]})",
                       "declared-by-uploader")
        else:
            _unknown(f, r, "ancestor" if ancestor else role, publish)
    tag_ids = {t.id for t in tagged}
    for t, src in read:
        if t.id in tag_ids:
            continue  # its tag says the same; applied above, as resting on the text
        f.terms.append(t)
        _apply(f, t, use, publish, label.format(name=f"{t.name}, read from its {src}"), hard=True, ref=r.ref)
        if tag_families and _fam(t) not in tag_families:
            f.needs_acknowledgement = True
            f.raise_to("warn", f"{r.ref}: its card's tag says {r.licence!r}, but its {src} is the {t.name}: which of "
                               f"them governs needs a human; both are applied until then. Read them, then add "
                               f"{f.repo.ref!r} to licence.acknowledge", "tag-text-mismatch",
                       f"{src} vs card metadata")
    for t, quote in owned:
        if _fam(t) in tag_families | read_families:
            continue
        f.terms.append(t)
        _apply(f, t, use, publish, label.format(name=f"{t.name}, as its card says"), hard=True, ref=r.ref)
        if tag_families:
            f.needs_acknowledgement = True
            f.raise_to("warn", f"{r.ref}: its card's tag says {r.licence!r}, but its card's text says \"{quote}\": "
                               f"which governs needs a human; both are applied until then. Read them, then add "
                               f"{f.repo.ref!r} to licence.acknowledge", "tag-card-mismatch", "card text vs metadata")
    for c in r.clauses:
        _clause(f, r, c, use, publish)
    for claim in (r.card.claims if r.card else []):
        if claim.kind != "lineage":
            continue
        for i in claim.licences:
            t = lookup(i) or family_terms(i)
            if t is None or _fam(t) in tag_families | read_families | covered:
                continue
            f.terms.append(t)
            _apply(f, t, use, publish, f"{r.ref} (derived from {t.name}, as its card says: \"{claim.quote}\")",
                   hard=True, ref=r.ref)
    if r.card and r.card.use_policies and not any(t.use_policy for t in [*tagged, *(t for t, _ in read)]):
        for quote in r.card.use_policies:
            f.oblige(f"Adhere to, and pass on to the adapter's users, the use policy the card of {r.ref} names: "
                     f"\"{quote}\"", "card text")


_CLAUSE_WORDS = {"non-commercial": "non-commercial", "research-only": "research only",
                 "no-derivatives": "no derivatives"}


def _clause(f: Finding, r: RepoLicence, c: Clause, use: str, publish: bool) -> None:
    """A decisive clause of a text hubtune does not know: it blocks the use it forbids, and no
    acknowledgement lifts that block."""
    where = f"{r.ref}: its {c.source} says \"{c.quote}\""
    cite = f"{c.source} of {r.ref}"
    if c.kind == "non-commercial":
        if use == "commercial":
            f.raise_to("block", f"{where}: a non-commercial clause, so commercial use is not permitted", "text-clause",
                       cite, hard=True)
        f.oblige(f"Not for commercial use: {r.ref}'s {c.source} says \"{c.quote}\"", cite)
    elif c.kind == "research-only":
        if use != "research":
            f.raise_to("block", f"{where}: a research-only clause, so {use} use is not permitted", "text-clause",
                       cite, hard=True)
        f.oblige(f"Research only: {r.ref}'s {c.source} says \"{c.quote}\"", cite)
    elif c.kind == "no-derivatives" and publish:
        f.raise_to("block", f"{where}: a no-derivatives clause, so the adapter cannot be published", "text-clause",
                   cite, hard=True)


def _unknown(f: Finding, repo: RepoLicence, role: str, publish: bool) -> None:
    if repo.source == "hub" or publish:
        f.needs_acknowledgement = True
        f.raise_to("warn", f"{repo.ref}: licence {repo.licence!r} is not one hubtune knows"
                           + (f" (nor are the texts it holds: {', '.join(repo.files)})" if repo.files else "")
                           + f"; read it yourself, then add {f.repo.ref!r} to licence.acknowledge to proceed",
                   "unknown-licence")
    else:
        f.raise_to("warn", f"{repo.ref}: local {role} without licence metadata (no README.md with `license:`); make "
                           f"sure you may use it", "local-without-licence")


def _to_acknowledge(f: Finding, repo: RepoLicence, terms: Terms, publish: bool) -> None:
    if terms.reading:
        f.needs_acknowledgement = repo.source == "hub" or publish
        f.raise_to("warn", f"{repo.ref}: licence {terms.id!r} is not one hubtune knows by id, but its name places it "
                           f"in the {terms.reading}, and it is read as such; read it yourself, then add {f.repo.ref!r} "
                           f"to licence.acknowledge. Acknowledging accepts the unknown text, not a use the family "
                           f"forbids", "family-reading", "family reading")
    else:
        f.needs_acknowledgement = True
        f.raise_to("warn", f"{repo.ref}: its card says its licence is `unknown`, which leaves all rights reserved; "
                           f"find out its terms, then add {f.repo.ref!r} to licence.acknowledge to proceed",
                   "unknown-licence", "card metadata: license: unknown")


def _apply(f: Finding, t: Terms, use: str, publish: bool, label: str, hard: bool = False,
           ref: str | None = None) -> None:
    """The rules of one licence on one repo (`ref`: whose licence it is, the finding's repo or an ancestor)."""
    ref = ref or f.repo.ref
    dataset = f.repo.repo_type == "dataset"
    before = f.applied.get(t.id)
    if before is not None and (before or not hard):
        return  # the same licence, met again up the lineage: its rules are on the finding already
    f.applied[t.id] = hard or bool(before)
    if use not in t.uses:
        inherits = "; the adapter inherits that restriction" if dataset else ""
        f.raise_to("block", f"{label} does not permit {use} use{inherits}", "use-not-permitted",
                   t.at(t.uses_clause), hard)
    if publish and not t.derivatives:
        f.raise_to("block", f"{label} does not permit publishing derivatives, so the adapter cannot be pushed",
                   "no-derivatives", t.at(t.derivatives_clause), hard)
    if "commercial" not in t.uses:
        f.oblige(f"Not for commercial use: trained with {ref}, licensed {t.name}.", t.at(t.uses_clause))
    if "personal" not in t.uses:
        f.oblige(f"Research only: {ref} is licensed {t.name}, which permits research (and evaluation) use only.",
                 t.at(t.uses_clause))
    if t.cap and (t.cap.scope == "all" or use == "commercial"):
        f.oblige(t.cap.text.format(repo=ref), t.at(t.cap.clause))
        if t.cap.confirm:
            f.condition(t.cap.text.format(repo=ref), t.at(t.cap.clause), label)
    for c in t.conditions:
        if use in c.uses:
            f.condition(c.text.format(repo=ref), t.at(c.clause), label)
    if t.share_alike:
        f.raise_to("warn", f"{label} is share-alike: if the adapter is an adaptation of it, it must be shared under "
                           f"the same licence", "share-alike", t.at(t.share_alike))
        f.oblige(f"Share-alike: publish the adapter under {t.name} if it adapts {ref}.", t.at(t.share_alike))
    for duty in t.duties:
        f.oblige(duty.text.format(repo=ref), t.at(duty.clause))
    if t.attribution and (not dataset or t.attribution_through_outputs):
        f.attributions.append(t.attribution)
        through = f" (it was trained on {ref}, licensed {t.name})" if dataset else ""
        f.oblige(f'Display "{t.attribution}" prominently on the card and in any product using the adapter{through}.',
                 t.at(t.attribution_clause))
    if t.use_policy:
        f.oblige(f"Pass on the use restrictions of {ref}: {t.use_policy}", t.at(t.use_policy_clause))
    if t.name_rule and (not dataset or t.name_rule.through_outputs):
        f.name_rules.append((t.name_rule, t.at(t.name_rule.clause)))
        whose = f"a model trained on {ref} (data under {t.name})" if dataset else f"a derivative of {ref}"
        f.oblige(f"Naming: {whose} is published under a name that {t.name_rule.words.removeprefix('its name ')}.",
                 t.at(t.name_rule.clause))
    if t.eu_multimodal and not dataset:
        if t.multimodal or f.repo.pipeline_tag in MULTIMODAL_TASKS:
            f.raise_to("warn", f"{label} is a multimodal model: the licence grants no rights to individuals "
                               f"domiciled in, or companies with their principal place of business in, the EU "
                               f"(end users of a product built on it excepted); do not train or publish it from the "
                               f"EU", "eu-multimodal", t.at(t.eu_multimodal))


def _repo_rules(f: Finding, repo: RepoLicence) -> None:
    """Rules about the repo rather than its licence text: the EU gate and the token's access."""
    from hubtune.hub import hub_url

    url = hub_url(repo.ref, repo.repo_type) if repo.source == "hub" else repo.ref
    if repo.eu_disallowed:
        f.raise_to("warn", f"{repo.ref}: its gate refuses access from the European Union; licensees in the EU may "
                           f"not use it", "eu-gate", "Hub gate: extra_gated_eu_disallowed")
    if not repo.gated:
        return
    f.oblige(f"{repo.ref} is gated: its users accept its terms on {url}.")
    if repo.access == "denied":
        f.raise_to("warn", f"{repo.ref} is gated and the token in use belongs to an account that has not been "
                           f"granted access: accept its terms at {url} with that account, or use a token of an "
                           f"account that has", "gated-access", "Hub gate")
    elif repo.access == "no token":
        f.raise_to("warn", f"{repo.ref} is gated and no Hugging Face token is set, so the Hub cannot tell whether you "
                           f"accepted its terms: accept them at {url}, then set a token of that account "
                           f"(`export HF_TOKEN=hf_...` or `hf auth login`)", "gated-access", "Hub gate")


# ---- rules across repos -----------------------------------------------------------------------
def _cross_rules(findings: list[Finding]) -> None:
    base, datasets = findings[0], findings[1:]
    families = {t.family or t.id for t in base.terms}
    for f in datasets:
        for t in f.terms:
            if t.improve_only and not families & t.improve_only:
                f.raise_to("block", f"{f.repo.ref} (dataset, {t.name}): the licence forbids using its materials or "
                                    f"their outputs to improve any other large language model than "
                                    f"{' or '.join(sorted(t.improve_only))} models and their derivatives, and the base "
                                    f"{base.repo.ref} is licensed {base.repo.licence}; this holds for every use. If "
                                    f"the base is in fact such a derivative, acknowledge {f.repo.ref!r}",
                           "outputs-improve-other-models", t.at(t.improve_clause))
    passing_on = [(g, u) for g in findings for u in g.terms if u.use_policy_clause]
    for f in findings:
        for t in f.terms:
            if not t.no_added_restrictions:
                continue
            for g, u in passing_on:
                if g is not f:
                    f.raise_to("warn", f"{f.repo.ref} ({t.name}) forbids adding restrictions to an adaptation "
                                       f"[{t.at(t.no_added_restrictions)}], while {g.repo.ref} ({u.name}) requires "
                                       f"passing its use restrictions on to the adapter's users "
                                       f"[{u.at(u.use_policy_clause)}]: if the adapter adapts {f.repo.ref}, it cannot "
                                       f"meet both", "share-alike-vs-use-restrictions",
                               f"{t.at(t.no_added_restrictions)}; {u.at(u.use_policy_clause)}", cited=True)


def licence_verdict(model: RepoLicence, datasets: list[RepoLicence], use: str = "personal",
                    publish: bool = False) -> Verdict:
    """Combine the base model's and the datasets' licences for a declared use."""
    if use not in USES:
        raise ValueError(f"use must be one of {', '.join(USES)}, got {use!r}")
    findings = [_finding(r, use, publish) for r in [model, *datasets]]
    _cross_rules(findings)
    for f in findings:
        if not f.hits:
            role = "dataset" if f.repo.repo_type == "dataset" else "base model"
            lineage = " and the licences of its lineage" if f.repo.chains() else ""
            f.raise_to("allow", f"{f.repo.ref} ({role}, {f.repo.licence}){lineage} permit{'' if lineage else 's'} "
                                f"{use} use" + (" and publishing an adapter" if publish else ""), "permitted")
    return Verdict(use, publish, findings)


def check(model: str, datasets: list[str] | tuple[str, ...] = (), use: str = "personal",
          revision: str | None = None, publish: bool = False) -> Verdict:
    """Read the licences of a model and datasets (Hub ids or paths) and give the verdict."""
    return licence_verdict(read_licence(model, "model", revision),
                           [read_licence(d, "dataset") for d in datasets], use, publish)


# ---- the gates --------------------------------------------------------------------------------
def _stop(verdict: Verdict, findings: list[Finding], doing: str) -> LicenceBlocked:
    lines = [f"licence gate: {doing} stopped for {verdict.use} use:"]
    lines += [f"  - {h.reason}" for f in findings for h in f.hits if h.verdict not in ("allow", "conditional")]
    conditions = [c for f in findings for c in f.conditions]
    if conditions:
        lines.append("allowed once you confirm that you have done this:")
        lines += [f"  - {c}" for c in conditions]
    hard = [f.repo.ref for f in findings if f.hard_block]
    soft = [f for f in findings if not f.hard_block]
    if hard:
        lines.append(f"Fix: for {', '.join(hard)} the block rests on the licence's own words (its text, its card's "
                     f"text, or the family its name places it in): an acknowledgement accepts an unknown text or "
                     f"confirms a condition, not a use its family forbids, nor one its text or card forbids. Declare a "
                     f"use it permits (licence.use) or use other repos.")
    if soft:
        refs = ", ".join(repr(f.repo.ref) for f in soft)
        how = (f"licence.acknowledge=[{refs}] in the run config" if doing == "training" else
               " ".join(f"--acknowledge {f.repo.ref}" for f in soft) + " on `hubtune push`")
        lines.append(f"Fix: declare a use these licences permit (licence.use), use other repos, or, once you have "
                     f"done what a condition asks (or if you hold a licence that covers the use), acknowledge it "
                     f"explicitly: {how}")
    return LicenceBlocked("\n".join(lines), verdict)


def gate_for_training(config) -> Verdict:
    """Run before weights are loaded: raise LicenceBlocked on a block or an unknown licence that
    the config does not acknowledge; otherwise return the verdict for the summary and the card."""
    verdict = licence_verdict(read_licence(config.model.id, "model", config.model.revision),
                              dataset_licences(config.data.trained_sources(), config.licence.declared),
                              config.licence.use)
    stopping = verdict.unacknowledged(config.licence.acknowledge)
    if stopping:
        raise _stop(verdict, stopping, "training")
    return verdict


def gate_for_publishing(model: RepoLicence, datasets: list[RepoLicence], use: str,
                        acknowledge: list[str], repo_id: str) -> Verdict:
    """Run before a push: the licences must permit publishing and the repo name must follow their
    naming rules (a base's, and since Llama 3.1 also a dataset's: §1.b.i binds "outputs or results")."""
    verdict = licence_verdict(model, datasets, use, publish=True)
    stopping = verdict.unacknowledged(acknowledge)
    if stopping:
        raise _stop(verdict, stopping, "publishing")
    name = repo_id.split("/")[-1]
    for ref, pattern, words, clause in verdict.name_rules:
        if not re.match(pattern, name):
            raise NamingRuleError(
                f"cannot publish {repo_id}: it derives from (or was trained on) {ref}, whose licence says {words} "
                f"[{clause}]. "
                f"Push to a repo named like {repo_id.split('/')[0]}/{_suggest(pattern, name)} instead.", verdict)
    return verdict


def _suggest(pattern: str, name: str) -> str:
    rest = re.sub(r"(?i)^llama[-_. ]?", "", name)
    if "3" in pattern and not rest.startswith("3"):
        rest = f"3-{rest}"
    return f"Llama-{rest}"


def format_table(verdict: Verdict) -> str:
    """The verdict as a plain-text table, then its reasons and obligations."""
    from hubtune.tables import text_table

    rows = [(f.repo.ref, f.repo.repo_type, f.repo.licence, str(f.repo.gated or "no"),
             (f.repo.access or "unknown") if f.repo.gated else "-", f.verdict) for f in verdict.findings]
    lines = [text_table(("repo", "type", "licence", "gated", "access", "verdict"), rows)]
    chains = [c for f in verdict.findings for c in f.repo.chains()]
    if chains:
        lines += ["", "lineage (every ancestor's terms apply):"] + [f"  {c}" for c in chains]
    lines += ["", f"verdict: {verdict.verdict} (use: {verdict.use})", "reasons:"]
    lines += [f"  - {r}" for r in verdict.reasons]
    if verdict.conditions:
        lines.append("conditions (allowed once you do this; confirm with licence.acknowledge):")
        lines += [f"  - {c}" for c in verdict.conditions]
    if verdict.obligations:
        lines.append("obligations:")
        lines += [f"  - {o}" for o in verdict.obligations]
    pending = [f.repo.ref for f in verdict.findings if f.needs_acknowledgement or f.conditions]
    if pending:
        lines.append(f"to train or push anyway, acknowledge: licence.acknowledge=[{', '.join(map(repr, pending))}]")
    return "\n".join(lines)
