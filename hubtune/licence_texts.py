"""What a repo's licence files and card prose say, read as text.

- `recognise`: which licence hubtune knows a LICENSE / NOTICE / USE_POLICY text (or a card) is, by
  fingerprints of its distinctive clauses (titles and sentences only that licence has), never by the
  file's name.
- `decisive_clauses`: in a text hubtune does not know, the clauses that decide a use: non-commercial,
  research only, no derivatives. Read conservatively: any such clause counts.
- `read_card`: sentences of the card's prose that name licences: another model's terms it is
  "derived from", "originally licensed under" or "subject to" (lineage), a licence other than its
  tag ("licensed under ..."), an acceptable use policy it must adhere to. Each comes with its sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Top-level files whose text is read (any case); a `license_link` inside the repo is read too.
TEXT_PREFIXES = ("LICENSE", "LICENCE", "NOTICE", "USE_POLICY", "COPYING")
MAX_TEXT_CHARS = 200_000  # the licences known here are 3-40 kB; a longer file is read up to this


def wanted(name: str) -> bool:
    """A top-level licence text: LICENSE, LICENSE-MODEL, NOTICE.txt, USE_POLICY.md, ... (not a PDF)."""
    return "/" not in name and name.upper().startswith(TEXT_PREFIXES) and not name.lower().endswith(".pdf")


@dataclass(frozen=True)
class Fingerprint:
    licence: str  # its id in licence_terms.LICENCES
    all_of: tuple[str, ...]  # regexes (on the normalised text) that must all match
    none_of: tuple[str, ...] = ()  # regexes that rule it out (a sibling licence's own title)


_LLAMA3X = r"llama {v} community license agreement"
# Licence texts: the title plus a clause only that licence has.
FINGERPRINTS: tuple[Fingerprint, ...] = (
    Fingerprint("llama2", (r"llama 2 community license agreement", r"llama 2 version release date")),
    Fingerprint("llama3", (r"meta llama 3 community license agreement", r"built with meta llama 3")),
    *[Fingerprint(f"llama{v}", (_LLAMA3X.format(v=re.escape(v)), r"built with llama"))
      for v in ("3.1", "3.2", "3.3")],
    Fingerprint("llama4", (r"llama 4 community license agreement", r"built with llama")),
    Fingerprint("gemma", (r"gemma terms of use", r"model derivatives")),
    Fingerprint("deepseek", (r"deepseek license agreement", r"use-based restrictions", r"attachment a")),
    Fingerprint("stabilityai-ai-community", (r"stability ai community license", r"powered by stability ai")),
    Fingerprint("exaone-1.1-nc", (r"exaone ai model license agreement 1\.1 ?- ?nc",)),
    Fingerprint("exaone-1.2-nc", (r"exaone ai model license agreement 1\.2 ?- ?nc",)),
    Fingerprint("glm-4", (r"built with glm-4", r"bigmodel\.cn/mla/form")),
    Fingerprint("qwen-research", (r"qwen research license agreement",)),
    Fingerprint("qwen", (r"qwen license agreement",), (r"qwen research license agreement",)),
    Fingerprint("tongyi-qianwen-research", (r"tongyi qianwen research license agreement",)),
    Fingerprint("tongyi-qianwen", (r"tongyi qianwen license agreement",), (r"tongyi qianwen research license",)),
    Fingerprint("nvidia-open-model-license", (r"nvidia open model license agreement",)),
    Fingerprint("mrl", (r"mistral ai research license",)),
    Fingerprint("mnpl", (r"mistral ai non-production license",)),
    Fingerprint("apache-2.0", (r"apache license,? version 2\.0, january 2004",
                               r"terms and conditions for use, reproduction, and distribution")),
    Fingerprint("mit", (r"permission is hereby granted, free of charge, to any person obtaining a copy",
                        r"the above copyright notice and this permission notice shall be included")),
    Fingerprint("bsd-3-clause", (r"redistribution and use in source and binary forms",
                                 r"neither the name of the copyright holder nor the names of its")),
    Fingerprint("bsd-2-clause", (r"redistribution and use in source and binary forms",
                                 r"this list of conditions and the following disclaimer in the documentation"),
                (r"neither the name of",)),
    Fingerprint("agpl-3.0", (r"gnu affero general public license", r"version 3, 19 november 2007")),
    Fingerprint("gpl-3.0", (r"gnu general public license", r"version 3, 29 june 2007")),
    Fingerprint("gpl-2.0", (r"gnu general public license", r"version 2, june 1991")),
    Fingerprint("cc0-1.0", (r"cc0 1\.0 universal",)),
    Fingerprint("bigscience-openrail-m", (r"bigscience open rail-m license",)),
    Fingerprint("creativeml-openrail-m", (r"creativeml open rail-m",)),
    Fingerprint("bigcode-openrail-m", (r"bigcode open rail-m",)),
    Fingerprint("falcon-llm-license", (r"falcon(?: llm)? (?:180b )?(?:tii )?license",
                                       r"technology innovation institute")),
    Fingerprint("cc-by-nc-sa-4.0", (r"attribution-noncommercial-sharealike 4\.0 international",)),
    Fingerprint("cc-by-nc-4.0", (r"attribution-noncommercial 4\.0 international",),
                (r"attribution-noncommercial-(sharealike|noderivatives)",)),
    Fingerprint("cc-by-sa-4.0", (r"attribution-sharealike 4\.0 international",), (r"noncommercial",)),
    Fingerprint("cc-by-4.0", (r"attribution 4\.0 international",),
                (r"noncommercial", r"sharealike", r"noderivatives")),
    Fingerprint("cc-by-nc-nd-4.0", (r"attribution-noncommercial-noderivatives 4\.0 international",)),
    Fingerprint("cc-by-nd-4.0", (r"attribution-noderivatives 4\.0 international",), (r"noncommercial",)),
)
# Card prose whose licence is stated in words rather than a file.
CARD_FINGERPRINTS: tuple[Fingerprint, ...] = (
    Fingerprint("internlm", (r"model weights are fully open for academic research and also allow free commercial "
                             r"usage", r"apply for a commercial license")),
    Fingerprint("c4ai-cc-by-nc", (r"cc-by-nc", r"c4ai'?s acceptable use policy")),
)


def normalise(text: str) -> str:
    """Lower case, straight quotes, markdown links and emphasis dropped, whitespace collapsed."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [words](link) -> words
    text = text.translate({0x2018: "'", 0x2019: "'", 0x201C: '"', 0x201D: '"', 0x2013: "-", 0x2014: "-",
                           0xA0: " "})
    text = re.sub(r"[*_`]+", "", text)
    return re.sub(r"\s+", " ", text).strip().lower()


def _matches(fp: Fingerprint, flat: str) -> bool:
    return all(re.search(p, flat) for p in fp.all_of) and not any(re.search(p, flat) for p in fp.none_of)


def recognise(text: str, prints: tuple[Fingerprint, ...] = FINGERPRINTS) -> list[str]:
    """The ids of the known licences whose fingerprint the text carries (usually one)."""
    flat = normalise(text[:MAX_TEXT_CHARS])
    return [fp.licence for fp in prints if _matches(fp, flat)]


# ---- decisive clauses of unknown texts -----------------------------------------------------------
_NC = (r"\bnon-?commercial\b|\bnot for commercial\b|\bno commercial use\b|prohibited from using[^.]{0,160}"
       r"commercial|commercial (?:use|purposes?|exploitation)[^.]{0,80}\b(?:is|are) (?:strictly |expressly )?"
       r"(?:prohibited|not (?:permitted|allowed))|\bcc[- ]by[- ]nc\b|\b\d\.\d ?- ?nc\b")
_RESEARCH = (r"solely for (?:non-commercial )?research|for research (?:purposes? )?only|\bresearch[- ]only\b|"
             r"only for (?:academic |non-commercial )?research|exclusively for research")
_ND = r"\bno ?derivatives\b|\bnoderivatives\b|may not (?:modify|create derivative works)"
CLAUSE_KINDS = (("non-commercial", _NC), ("research-only", _RESEARCH), ("no-derivatives", _ND))


@dataclass(frozen=True)
class Clause:
    """A decisive clause read out of a text hubtune does not know."""

    kind: str  # "non-commercial", "research-only" or "no-derivatives"
    quote: str  # the sentence, as written
    source: str  # the file it is in, or "card text"


def sentences(text: str) -> list[str]:
    """The text's sentences (lines, then sentence ends), markdown links and emphasis dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"\*\*|__|`", "", text)
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*+]|\d+[.)]|#+|>)\s*", "", line).strip()
        out += [s.strip() for s in re.split(r"(?<=[.;!?])\s+(?=[A-Z(\"“])", line) if s.strip()]
    return out


def _quote(sentence: str) -> str:
    return sentence if len(sentence) <= 300 else sentence[:297] + "..."


def decisive_clauses(text: str, source: str, need: str | None = None) -> list[Clause]:
    """The first sentence of each decisive kind in `text`; with `need`, only sentences that also match it."""
    found: dict[str, Clause] = {}
    for s in sentences(text[:MAX_TEXT_CHARS]):
        flat = normalise(s)
        if need and not re.search(need, flat):
            continue
        for kind, pattern in CLAUSE_KINDS:
            if kind not in found and re.search(pattern, flat):
                found[kind] = Clause(kind, _quote(s), source)
    return list(found.values())


# ---- the card's prose ---------------------------------------------------------------------------------
def _cc(m: re.Match) -> str:
    elements = re.findall(r"nc|sa|nd", m[1])
    return f"cc-by{''.join('-' + e for e in elements)}-{m[2]}"


# Licence names as cards write them in prose -> ids.
NAMES: tuple[tuple[str, object], ...] = (
    (r"\bmeta llama 3 community licen[sc]e", "llama3"),
    (r"\bllama[ -]?(2|3|3\.1|3\.2|3\.3|4)(?: community)? licen[sc]e", lambda m: f"llama{m[1]}"),
    (r"\bgemma terms of use\b", "gemma"),
    (r"\bqwen research licen[sc]e", "qwen-research"),
    (r"\bqwen licen[sc]e", "qwen"),
    (r"\btongyi qianwen research licen[sc]e", "tongyi-qianwen-research"),
    (r"\btongyi qianwen licen[sc]e", "tongyi-qianwen"),
    (r"\bapache[ -]?(?:licen[sc]e)?,? ?(?:version )?2\.0\b", "apache-2.0"),
    (r"\bmit licen[sc]e\b", "mit"),
    (r"\bcc[ -]by((?:[ -](?:nc|sa|nd))*)[ -](\d\.\d)\b", _cc),
    (r"\bnvidia open model licen[sc]e", "nvidia-open-model-license"),
    (r"\bdeepseek licen[sc]e", "deepseek"),
    (r"\bstability ai community licen[sc]e", "stabilityai-ai-community"),
    (r"\bexaone ai model licen[sc]e agreement 1\.([12]) ?- ?nc", lambda m: f"exaone-1.{m[1]}-nc"),
    (r"\bglm-4 licen[sc]e", "glm-4"),
)
LINEAGE = (r"derived from|originally licen[sc]ed|subject to (?:the |additional )?[^.]{0,40}?(?:terms|licen[sc]e)|"
           r"fine-?tuned (?:from|on)|based on|built (?:up)?on|distilled from|additional information")
OWN = r"licen[sc]ed under|released under|governed by|\blicen[sc]e ?:|under the terms of|available under"
USE_POLICY = r"acceptable use (?:policy|addendum)"
USE_POLICY_BINDS = r"adher|comply|requires|incorporated|subject to|governed"
_MODEL_NAME = re.compile(r"\b[A-Za-z][\w.]*-[\w.-]*\d[\w.-]*")


@dataclass(frozen=True)
class Claim:
    """A sentence of the card's prose naming licences."""

    kind: str  # "lineage": another model's terms it derives from / is subject to; "own": its own licence
    licences: tuple[str, ...]
    quote: str


@dataclass
class CardReading:
    claims: list[Claim] = field(default_factory=list)
    use_policies: list[str] = field(default_factory=list)  # sentences binding an acceptable use policy
    clauses: list[Clause] = field(default_factory=list)  # decisive clauses in licence sentences
    recognised: list[str] = field(default_factory=list)  # CARD_FINGERPRINTS that matched


def card_body(readme: str) -> str:
    """The card's prose: README.md without its YAML front matter."""
    m = re.match(r"^---\s*\n.*?\n---\s*(?:\n|$)", readme, re.S)
    return readme[m.end():] if m else readme


def names_in(sentence: str) -> list[str]:
    flat = normalise(sentence)
    out = []
    for pattern, id_ in NAMES:
        for m in re.finditer(pattern, flat):
            out.append(id_(m) if callable(id_) else id_)
    return list(dict.fromkeys(out))


def _about_a_sibling(sentence: str, repo_name: str) -> bool:
    """A shared card's sentence about other repos of the same family ("X-Qwen-7B ... are derived from
    Qwen-2.5") when the repo is X-Llama-8B: it names models sharing the repo's stem, but not the repo."""
    if not repo_name or repo_name.lower() in sentence.lower():
        return False
    stem = "-".join(repo_name.lower().split("-")[:3])
    return any(n.lower().startswith(stem) for n in _MODEL_NAME.findall(sentence)) if stem.count("-") >= 1 else False


def read_card(readme: str, repo_name: str) -> CardReading:
    """What the card's prose says about licences (see module doc)."""
    body = card_body(readme)[:MAX_TEXT_CHARS]
    out = CardReading(recognised=recognise(body, CARD_FINGERPRINTS))
    for s in sentences(body):
        flat = normalise(s)
        if "licen" not in flat and "terms" not in flat and "use policy" not in flat:
            continue
        if _about_a_sibling(s, repo_name):
            continue
        named = names_in(s)
        if named and re.search(LINEAGE, flat):
            out.claims.append(Claim("lineage", tuple(named), _quote(s)))
        elif named and re.search(OWN, flat):
            out.claims.append(Claim("own", tuple(named), _quote(s)))
        if re.search(USE_POLICY, flat) and re.search(USE_POLICY_BINDS, flat):
            out.use_policies.append(_quote(s))
        if not named and not out.recognised and re.search(r"licen[sc]|terms of use", flat):
            kinds = {c.kind for c in out.clauses}
            out.clauses += [Clause(kind, _quote(s), "card text") for kind, pattern in CLAUSE_KINDS
                            if kind not in kinds and re.search(pattern, flat)]
    return out
