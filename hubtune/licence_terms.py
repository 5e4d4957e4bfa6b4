"""The licences hubtune knows, as data: what each permits and what a derivative must carry, every
rule with the clause of the licence it comes from.

`LICENCES` maps a Hub licence id (a card's `license`, or its `license_name` when `license: other`)
to its `Terms`. `lookup` finds one; `family_terms` gives the conservative reading of an id hubtune
does not know but whose family it does (`cc-by-nc-2.1`, `acme-research-license`, ...).
`licence_table` renders the table the docs show (`python -m hubtune.licence_terms docs/hub.md`
rewrites it there).

Clause numbers are the licences' own. Where a number could not be checked against the licence's
text, the clause is named by its heading instead (e.g. "Attachment A", "Results clause").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

USES = ("personal", "research", "commercial")
ALL = frozenset(USES)
NON_COMMERCIAL = frozenset({"personal", "research"})
RESEARCH_ONLY = frozenset({"research"})

# Hub pipeline tags of models that take more than text: the Llama 3.2 EU restriction covers only these.
MULTIMODAL_TASKS = frozenset({"image-text-to-text", "image-to-text", "visual-question-answering", "any-to-any",
                              "video-text-to-text", "audio-text-to-text", "document-question-answering"})


@dataclass(frozen=True)
class Duty:
    """One thing a derivative (the adapter, its card, a product using it) must do."""

    label: str  # a few words for the README table, e.g. "copy of the licence"
    text: str  # the sentence the card carries; `{repo}` is the repo id
    clause: str  # where the licence says it, e.g. "§1.b.i"


@dataclass(frozen=True)
class NameRule:
    """A naming rule for published derivatives."""

    pattern: str  # regex the derivative's repo name must match
    words: str  # the rule in words: 'its name must begin with "Llama"'
    clause: str
    through_outputs: bool  # also binds a model trained on outputs under the licence (a dataset's)


@dataclass(frozen=True)
class Cap:
    """A ceiling (users or revenue) above which the licence grants less."""

    users: str  # the ceiling in words: "700 million monthly active users", "USD 1,000,000 in annual revenue"
    scope: str  # "all": no rights at all above it; "commercial": commercial use needs another licence
    clause: str
    text: str  # the obligation in words
    confirm: bool = False  # staying under it is a condition the user confirms (see Condition)


@dataclass(frozen=True)
class Condition:
    """Allowed once you do something: register, apply, stay under a cap. Shown as an action the user
    confirms (by acknowledging the repo), named by its clause."""

    label: str  # a few words: "register with Stability AI"
    text: str  # the action in words; `{repo}` is the repo id
    clause: str
    uses: frozenset[str] = frozenset({"commercial"})  # the declared uses it governs


@dataclass(frozen=True)
class Terms:
    """One licence. Every restriction carries the clause it comes from; `cite` prefixes the clauses
    in what `hubtune check` prints ("Llama 3.1 §1.b.i")."""

    id: str
    name: str
    link: str | None  # where its text lives; None when it has no canonical address
    cite: str  # short name used in citations
    uses: frozenset[str] = ALL  # declared uses it permits
    uses_clause: str | None = None  # the clause that limits the uses, when `uses` is not ALL
    derivatives: bool = True  # an adapter trained on it may be published
    derivatives_clause: str | None = None
    share_alike: str | None = None  # clause: adaptations must carry the same licence
    no_added_restrictions: str | None = None  # clause: adaptations may not carry further restrictions
    duties: tuple[Duty, ...] = ()  # notices, attribution, copies to carry
    copy_required: str | None = None  # clause: a copy of the licence goes with every derivative
    cap: Cap | None = None
    conditions: tuple[Condition, ...] = ()  # allowed once the user does something (see Condition)
    name_rule: NameRule | None = None
    attribution: str | None = None  # words a derivative must display ("Built with Llama")
    attribution_clause: str | None = None
    attribution_through_outputs: bool = False  # also for a model trained on its outputs
    use_policy: str | None = None  # use restrictions that must be passed on (link or description)
    use_policy_clause: str | None = None
    improve_only: frozenset[str] = frozenset()  # families whose models its outputs may improve (empty: any)
    improve_clause: str | None = None
    eu_multimodal: str | None = None  # clause: multimodal models' rights are not granted in the EU
    multimodal: bool = False  # every model under it takes more than text (Llama 4)
    family: str | None = None  # the model family it licenses, for `improve_only`
    acknowledge: bool = False  # hubtune cannot read its terms: the user must accept them explicitly
    reading: str | None = None  # set on a family reading: which family the unknown id was read as

    def at(self, clause: str | None) -> str:
        """A citation: "Llama 3.1 §1.b.i"."""
        return f"{self.cite} {clause}" if clause else self.cite


# ---- Creative Commons -------------------------------------------------------------------------
_CC_NAMES = {"by": "BY", "sa": "SA", "nc": "NC", "nd": "ND"}


def _cc(id_: str) -> Terms:
    """A Creative Commons licence from its id (cc-by-nc-sa-3.0). Clause numbers: the 4.0 licences'
    Sections 2-3; the 2.0-3.0 licences' Section 4, whose letters shift with the elements present."""
    elements = id_.removeprefix("cc-").rsplit("-", 1)[0].split("-")
    version = id_.rsplit("-", 1)[1]
    name = f"CC {'-'.join(_CC_NAMES[e] for e in elements)} {version}"
    nc, sa, nd = "nc" in elements, "sa" in elements, "nd" in elements
    if version == "4.0":
        credit, nc_clause, sa_clause, nd_clause = "§3(a)", "§2(a)(1)", "§3(b)", "§2(a)(1)(B)"
        no_more = "§3(b)(3)"
    else:  # Section 4: (a) restrictions, then SA, NC, attribution in that order when present
        letters = iter("bcde")
        sa_clause = f"§4({next(letters)})" if sa else None
        nc_clause = f"§4({next(letters)})" if nc else None
        credit = f"§4({next(letters)})"
        nd_clause, no_more = "§3", sa_clause
    return Terms(
        id_, name, f"https://creativecommons.org/licenses/{'-'.join(elements)}/{version}/", name,
        uses=NON_COMMERCIAL if nc else ALL, uses_clause=nc_clause if nc else None,
        derivatives=not nd, derivatives_clause=nd_clause if nd else None,
        share_alike=sa_clause if sa else None, no_added_restrictions=no_more if sa else None,
        duties=(Duty("credit", f"Credit {{repo}} ({name}): name the creator, link the licence and say what was "
                               f"changed.", credit),))


# ---- Meta Llama -------------------------------------------------------------------------------
_META = "https://github.com/meta-llama/llama-models/blob/main/models"
_LLAMA_CAP = "700 million monthly active users"


def _llama_cap(title: str) -> Cap:
    return Cap(_LLAMA_CAP, "all", "§2",
               f"No rights at all under the {title} licence (not only commercial ones) for a licensee whose "
               f"products or services, with its affiliates', had more than 700 million monthly active users in the "
               f"month before the {title} release date: such a licensee needs a licence from Meta first.")


def _llama(id_: str, title: str, link: str, policy: str, *, built_with: str, name_rule: NameRule,
           through_outputs: bool, notice_title: str, improve_only: frozenset[str] = frozenset(),
           eu: str | None = None, multimodal: bool = False) -> Terms:
    """Llama 3 and later: copy of the licence, "Built with ...", a name prefix, a Notice, the use
    policy and the 700M MAU clause."""
    return Terms(
        id_, f"{title} Community License", link, title,
        duties=(Duty("copy of the licence", f"Include a copy of the {title} Community License ({link}) with the "
                                            f"adapter.", "§1.b.i(A)"),
                Duty("Notice file", f'Carry in a "Notice" text file: "{notice_title} is licensed under the '
                                    f'{notice_title} Community License, Copyright © Meta Platforms, Inc. All Rights '
                                    f'Reserved."', "§1.b.iii")),
        copy_required="§1.b.i(A)", cap=_llama_cap(title), name_rule=name_rule,
        attribution=built_with, attribution_clause="§1.b.i(B)", attribution_through_outputs=through_outputs,
        use_policy=policy, use_policy_clause="§1.b.iv", improve_only=improve_only,
        improve_clause="§1.b.v" if improve_only else None, eu_multimodal=eu, multimodal=multimodal, family=id_)


_LLAMA_NAME = NameRule(r"^Llama", 'its name must begin with "Llama"', "§1.b.i", through_outputs=True)
_EU = "Acceptable Use Policy (EU clause)"


def _llama2() -> Terms:
    link = "https://ai.meta.com/llama/license/"
    return Terms(
        "llama2", "Llama 2 Community License", link, "Llama 2",
        duties=(Duty("copy of the licence", f"Include a copy of the Llama 2 Community License ({link}) with the "
                                            f"adapter.", "§1.b.i"),
                Duty("Notice file", 'Carry in a "Notice" text file: "Llama 2 is licensed under the LLAMA 2 Community '
                                    'License, Copyright (c) Meta Platforms, Inc. All Rights Reserved."', "§1.b.iii")),
        copy_required="§1.b.i", cap=_llama_cap("Llama 2"),
        use_policy="https://ai.meta.com/llama/use-policy", use_policy_clause="§1.b.iv",
        improve_only=frozenset({"llama2"}), improve_clause="§1.b.v", family="llama2")


def _exaone(id_: str, version: str | None) -> Terms:
    """The EXAONE AI Model License Agreement 1.1-NC (EXAONE 3.x) and 1.2-NC (EXAONE 4.x): a research-only
    grant (§2.1(a)); commercial use of the Model, Derivatives or Output expressly prohibited (§3.1)."""
    name = f"EXAONE AI Model License Agreement {version} - NC" if version else "EXAONE AI Model License Agreement - NC"
    return Terms(
        id_, name, "https://huggingface.co/LGAI-EXAONE/EXAONE-3.5-7.8B-Instruct/blob/main/LICENSE",
        f"EXAONE {version}-NC" if version else "EXAONE NC",
        uses=RESEARCH_ONLY, uses_clause="§2.1(a), §3.1",
        duties=(Duty("copy of the licence", "Distribute the adapter only with a copy of the EXAONE AI Model License "
                     "Agreement.", "§2.1(d)"),
                Duty("derivatives stay research-only", "The adapter and its outputs may be used for research only, "
                     "and not to develop or improve other models outside research.", "§2.1(c), §3.1")),
        copy_required="§2.1(d)",
        name_rule=NameRule(r"^EXAONE", 'its name must begin with "EXAONE"', "§2.1(c)", through_outputs=False),
        family="exaone")


# ---- Alibaba Qwen / Tongyi Qianwen ----------------------------------------------------------------
_QWEN_CAP_TEXT = ("Commercial use of {repo} in a product or service with more than 100 million monthly active "
                  "users needs a licence from Alibaba Cloud.")


def _alibaba(id_: str, name: str, link: str, cite: str, notice: str, *, research: bool, built_with: str | None,
             improve: str | None) -> Terms:
    """The Qwen and Tongyi Qianwen agreements: copy, modified-file notices, a verbatim Notice (§3),
    and either a 100M MAU commercial cap (§4) or a research-only grant (§1(i), §2(a))."""
    rules = "§4" if research else "§5"  # the "Rules of use" section
    return Terms(
        id_, name, link, cite,
        uses=RESEARCH_ONLY if research else ALL, uses_clause="§1(i), §2(a)" if research else None,
        duties=(Duty("copy of the licence", f"Give every recipient a copy of the {name}.", "§3(a)"),
                Duty("modified-file notices", "Mark the files you changed with prominent notices.", "§3(b)"),
                Duty("Notice file", f'Carry in a "Notice" text file: "{notice}"', "§3(c)")),
        copy_required="§3(a)",
        cap=None if research else Cap("100 million monthly active users", "commercial", "§4", _QWEN_CAP_TEXT),
        attribution=built_with, attribution_clause=f"{rules}(b)" if built_with else None,
        attribution_through_outputs=bool(built_with),
        improve_only=frozenset({"tongyi-qianwen", "qwen"}) if improve else frozenset(), improve_clause=improve,
        family="tongyi-qianwen" if improve else "qwen")


_QWEN_LINK = "https://huggingface.co/Qwen/Qwen2.5-72B-Instruct/blob/main/LICENSE"
_QWEN_RESEARCH_LINK = "https://huggingface.co/Qwen/Qwen2.5-3B-Instruct/blob/main/LICENSE"
_TONGYI_LINK = "https://github.com/QwenLM/Qwen/blob/main/Tongyi%20Qianwen%20LICENSE%20AGREEMENT"
_TONGYI_RESEARCH_LINK = "https://github.com/QwenLM/Qwen/blob/main/Tongyi%20Qianwen%20RESEARCH%20LICENSE%20AGREEMENT"


# ---- Responsible AI licences (RAIL) and the like -------------------------------------------------
def _rail(id_: str, name: str, link: str | None, cite: str, *, pass_on: str, copy: str, restrictions: str,
          modified: str | None = None) -> Terms:
    """A RAIL-style licence: its use restrictions go, as an enforceable provision, into the licence
    of every derivative; a copy of the licence and notice on modified files go with it."""
    duties = [Duty("copy of the licence", f"Give every recipient of the adapter a copy of the {name}.", copy),
              Duty("use restrictions in the adapter's licence",
                   f"Include the use restrictions of {{repo}} ({restrictions}) as an enforceable provision in the "
                   f"adapter's licence and tell its users they apply.", pass_on)]
    if modified:
        duties.append(Duty("modified-file notices", "Mark the files you changed with prominent notices.", modified))
    return Terms(id_, name, link, cite, duties=tuple(duties), copy_required=copy,
                 use_policy=f"{restrictions} of the {name}", use_policy_clause=pass_on)


def _simple(id_: str, name: str, link: str | None, cite: str, *duties: Duty, **kw) -> Terms:
    return Terms(id_, name, link, cite, duties=tuple(duties), **kw)


_GPL_TEXT = ("Publish the adapter under the same GNU licence, with its text and the corresponding source, if it is "
             "a work based on {repo}.")

LICENCES: dict[str, Terms] = {t.id: t for t in [
    # Permissive software licences.
    _simple("apache-2.0", "Apache License 2.0", "https://www.apache.org/licenses/LICENSE-2.0", "Apache-2.0",
            Duty("licence text and NOTICE", "Keep the Apache-2.0 licence text and any NOTICE file of {repo}.",
                 "§4(a), §4(d)"),
            Duty("modified-file notices", "Mark the files you changed with prominent notices.", "§4(b)"),
            copy_required="§4(a)"),
    _simple("mit", "MIT License", "https://opensource.org/license/mit", "MIT",
            Duty("copyright and licence text", "Keep the copyright notice and MIT licence text of {repo}.",
                 "notice condition"), copy_required="notice condition"),
    _simple("bsd-2-clause", "BSD 2-Clause License", "https://opensource.org/license/bsd-2-clause", "BSD-2-Clause",
            Duty("copyright and conditions", "Keep the copyright notice and BSD licence conditions of {repo}.",
                 "conditions 1-2"), copy_required="conditions 1-2"),
    _simple("bsd-3-clause", "BSD 3-Clause License", "https://opensource.org/license/bsd-3-clause", "BSD-3-Clause",
            Duty("copyright and conditions", "Keep the copyright notice and BSD licence conditions of {repo}.",
                 "conditions 1-2"),
            Duty("no endorsement", "Do not use the names of {repo}'s authors to endorse the adapter.", "condition 3"),
            copy_required="conditions 1-2"),
    # Copyleft software licences: share-alike, and no further restrictions on the work.
    _simple("gpl", "GNU General Public License (version not stated)", "https://www.gnu.org/licenses/", "GPL",
            Duty("same licence, with source", _GPL_TEXT, "v2 §2(b) / v3 §5(c)"),
            share_alike="v2 §2(b) / v3 §5(c)", no_added_restrictions="v2 §6 / v3 §10",
            copy_required="v2 §1 / v3 §4"),
    _simple("gpl-2.0", "GNU General Public License v2.0", "https://www.gnu.org/licenses/old-licenses/gpl-2.0.html",
            "GPL-2.0", Duty("same licence, with source", _GPL_TEXT, "§2(b), §3"),
            share_alike="§2(b)", no_added_restrictions="§6", copy_required="§1"),
    _simple("gpl-3.0", "GNU General Public License v3.0", "https://www.gnu.org/licenses/gpl-3.0.html", "GPL-3.0",
            Duty("same licence, with source", _GPL_TEXT, "§5(c), §6"),
            share_alike="§5(c)", no_added_restrictions="§10", copy_required="§4"),
    _simple("agpl-3.0", "GNU Affero General Public License v3.0", "https://www.gnu.org/licenses/agpl-3.0.html",
            "AGPL-3.0", Duty("same licence, with source", _GPL_TEXT + " Offer the source to users who interact with "
                             "it over a network.", "§5(c), §6, §13"),
            share_alike="§5(c)", no_added_restrictions="§10", copy_required="§4"),
    # Creative Commons.
    Terms("cc0-1.0", "CC0 1.0 Universal", "https://creativecommons.org/publicdomain/zero/1.0/", "CC0 1.0"),
    *[_cc(f"cc-{e}-{v}") for e, versions in (
        ("by", ("2.0", "2.5", "3.0", "4.0")), ("by-sa", ("3.0", "4.0")), ("by-nc", ("2.0", "3.0", "4.0")),
        ("by-nc-sa", ("2.0", "3.0", "4.0")), ("by-nd", ("4.0",)), ("by-nc-nd", ("3.0", "4.0"))) for v in versions],
    # Open data licences.
    _simple("odc-by", "Open Data Commons Attribution License 1.0", "https://opendatacommons.org/licenses/by/1-0/",
            "ODC-By 1.0", Duty("notice", "Attribute {repo} as the ODC-By licence requires and keep its notices.",
                                "§4")),
    _simple("odbl", "Open Database License 1.0", "https://opendatacommons.org/licenses/odbl/1-0/", "ODbL 1.0",
            Duty("notice on produced works", "Say on the card that the adapter was produced with content from {repo}, "
                 "which is available under the ODbL.", "§4.3"),
            share_alike="§4.4 (Derivative Databases)"),
    _simple("cdla-permissive-1.0", "Community Data License Agreement - Permissive 1.0",
            "https://cdla.dev/permissive-1-0/", "CDLA-Permissive-1.0",
            Duty("keep notices with the data", "If you share the data of {repo} itself, keep its notices and "
                 "this agreement with it; a trained model is a Result, which it does not restrict.",
                 "Results clause")),
    _simple("cdla-permissive-2.0", "Community Data License Agreement - Permissive 2.0",
            "https://cdla.dev/permissive-2-0/", "CDLA-Permissive-2.0",
            Duty("licence with shared data", "If you share the data of {repo} itself, include this agreement or a "
                 "link to it; a trained model is a Result, which it does not restrict.", "§2.2, §3")),
    _simple("cdla-sharing-1.0", "Community Data License Agreement - Sharing 1.0", "https://cdla.dev/sharing-1-0/",
            "CDLA-Sharing-1.0",
            Duty("shared data stays CDLA-Sharing", "If you share the data of {repo} or data derived from it, share it "
                 "under CDLA-Sharing-1.0 with its attributions; a trained model is a Result, which it does not "
                 "restrict.", "Results clause")),
    # Meta Llama.
    _llama2(),
    _llama("llama3", "Meta Llama 3", "https://llama.meta.com/llama3/license/",
           "https://llama.meta.com/llama3/use-policy", built_with="Built with Meta Llama 3",
           name_rule=NameRule(r"^Llama[-_. ]?3", 'its name must begin with "Llama 3" (e.g. Llama-3-...)', "§1.b.i",
                              through_outputs=False),
           through_outputs=False, notice_title="Meta Llama 3", improve_only=frozenset({"llama3"})),
    _llama("llama3.1", "Llama 3.1", f"{_META}/llama3_1/LICENSE", "https://llama.meta.com/llama3_1/use-policy",
           built_with="Built with Llama", name_rule=_LLAMA_NAME, through_outputs=True, notice_title="Llama 3.1"),
    _llama("llama3.2", "Llama 3.2", f"{_META}/llama3_2/LICENSE", f"{_META}/llama3_2/USE_POLICY.md",
           built_with="Built with Llama", name_rule=_LLAMA_NAME, through_outputs=True, notice_title="Llama 3.2",
           eu=_EU),
    _llama("llama3.3", "Llama 3.3", f"{_META}/llama3_3/LICENSE", "https://www.llama.com/llama3_3/use-policy",
           built_with="Built with Llama", name_rule=_LLAMA_NAME, through_outputs=True, notice_title="Llama 3.3"),
    _llama("llama4", "Llama 4", f"{_META}/llama4/LICENSE", "https://www.llama.com/llama4/use-policy",
           built_with="Built with Llama", name_rule=_LLAMA_NAME, through_outputs=True, notice_title="Llama 4",
           eu=_EU, multimodal=True),
    # Google Gemma (1 to 3; Gemma 4 is Apache-2.0).
    _simple("gemma", "Gemma Terms of Use", "https://ai.google.dev/gemma/terms", "Gemma ToU",
            Duty("use restrictions in the adapter's licence", "Include the use restrictions of Gemma ToU §3.2 as an "
                 "enforceable provision in the adapter's licence and tell its users they apply.", "§3.1"),
            Duty("copy of the terms", "Give every recipient a copy of the Gemma Terms of Use.", "§3.1"),
            Duty("modified-file notices", "Mark the files you changed with prominent notices.", "§3.1"),
            Duty("Notice file", 'Carry in a "Notice" text file: "Gemma is provided under and subject to the Gemma '
                                'Terms of Use found at ai.google.dev/gemma/terms"', "§3.1"),
            copy_required="§3.1", use_policy="the Gemma Prohibited Use Policy "
            "(https://ai.google.dev/gemma/prohibited_use_policy), incorporated by §3.2", use_policy_clause="§3.1",
            family="gemma"),
    # Alibaba.
    _alibaba("qwen", "Qwen License Agreement", _QWEN_LINK, "Qwen",
             "Qwen is licensed under the Qwen LICENSE AGREEMENT, Copyright (c) Alibaba Cloud. All Rights Reserved.",
             research=False, built_with="Built with Qwen", improve=None),
    _alibaba("qwen-research", "Qwen Research License Agreement", _QWEN_RESEARCH_LINK, "Qwen Research",
             "Qwen is licensed under the Qwen RESEARCH LICENSE AGREEMENT, Copyright (c) Alibaba Cloud. All Rights "
             "Reserved.", research=True, built_with="Built with Qwen", improve=None),
    _alibaba("tongyi-qianwen", "Tongyi Qianwen License Agreement", _TONGYI_LINK, "Tongyi Qianwen",
             "Tongyi Qianwen is licensed under the Tongyi Qianwen LICENSE AGREEMENT, Copyright (c) Alibaba Cloud. "
             "All Rights Reserved.", research=False, built_with=None, improve="§5(b)"),
    _alibaba("tongyi-qianwen-research", "Tongyi Qianwen Research License Agreement", _TONGYI_RESEARCH_LINK,
             "Tongyi Qianwen Research", "Tongyi Qianwen is licensed under the Tongyi Qianwen RESEARCH LICENSE "
             "AGREEMENT, Copyright (c) Alibaba Cloud. All Rights Reserved.", research=True, built_with=None,
             improve="§4(b)"),
    # RAIL and RAIL-derived.
    _rail("openrail", "Open RAIL License", "https://huggingface.co/blog/open_rail", "OpenRAIL",
          pass_on="use-restriction clause", copy="distribution clause", restrictions="the use restrictions"),
    _rail("bigscience-openrail-m", "BigScience Open RAIL-M License",
          "https://huggingface.co/spaces/bigscience/license", "BigScience OpenRAIL-M",
          pass_on="§4(a), §5", copy="§4(b)", restrictions="Attachment A", modified="§4(c)"),
    _rail("bigscience-bloom-rail-1.0", "BigScience BLOOM RAIL 1.0", "https://huggingface.co/spaces/bigscience/license",
          "BLOOM RAIL 1.0", pass_on="§4(a), §5", copy="§4(b)", restrictions="Attachment A", modified="§4(c)"),
    _rail("creativeml-openrail-m", "CreativeML Open RAIL-M",
          "https://huggingface.co/spaces/CompVis/stable-diffusion-license", "CreativeML OpenRAIL-M",
          pass_on="§4(a), §5", copy="§4(b)", restrictions="Attachment A", modified="§4(c)"),
    _rail("openrail++", "CreativeML Open RAIL++-M License",
          "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/LICENSE.md", "OpenRAIL++-M",
          pass_on="§4(a), §5", copy="§4(b)", restrictions="Attachment A", modified="§4(c)"),
    _rail("bigcode-openrail-m", "BigCode Open RAIL-M v1 License Agreement",
          "https://huggingface.co/spaces/bigcode/bigcode-model-license-agreement", "BigCode OpenRAIL-M v1",
          pass_on="use-restriction clause, Attachment A", copy="distribution clause", restrictions="Attachment A"),
    _rail("deepseek", "DeepSeek License Agreement 1.0",
          "https://github.com/deepseek-ai/DeepSeek-V3/blob/main/LICENSE-MODEL", "DeepSeek License",
          pass_on="§4(a), §5", copy="§4(b)", restrictions="Attachment A", modified="§4(c)"),
    # Other model licences.
    _simple("falcon-llm-license", "TII Falcon License", "https://falconllm.tii.ae/falcon-terms-and-conditions.html",
            "TII Falcon License",
            Duty("acceptable use policy in the adapter's licence", "Carry the Falcon Acceptable Use Policy into the "
                 "terms under which you distribute the adapter.", "Acceptable Use Policy clause"),
            Duty("copy of the licence", "Give every recipient a copy of the TII Falcon License.",
                 "redistribution clause"),
            Duty("attribution", "Say in the adapter's documentation that it is built using artificial intelligence "
                 "technology from the Technology Innovation Institute.", "attribution clause"),
            copy_required="redistribution clause", use_policy="the Falcon Acceptable Use Policy (FalconLLM.tii.ae)",
            use_policy_clause="Acceptable Use Policy clause"),
    _simple("nvidia-open-model-license", "NVIDIA Open Model License Agreement",
            "https://www.nvidia.com/en-us/agreements/enterprise-software/nvidia-open-model-license/", "NVIDIA OML",
            Duty("copy of the licence", "Give every recipient a copy of the NVIDIA Open Model License Agreement.",
                 "§3"),
            Duty("Notice file", 'Carry in a "Notice" text file: "Licensed by NVIDIA Corporation under the NVIDIA Open '
                                'Model License"', "§3"),
            Duty("keep guardrails", "Do not bypass or weaken the model's guardrails without an equivalent substitute: "
                 "the licence ends automatically if you do.", "§2.1"),
            copy_required="§3", use_policy="NVIDIA's Trustworthy AI terms "
            "(https://www.nvidia.com/en-us/agreements/trustworthy-ai/terms/)", use_policy_clause="§2.3"),
    _simple("mnpl", "Mistral AI Non-Production License", "https://mistral.ai/licenses/MNPL-0.1.md", "MNPL",
            Duty("copy of the licence and its Notice", "Give every recipient a copy of the MNPL and carry the Notice "
                 "text file it requires.", "§2"),
            Duty("modification notice", "Say prominently that the adapter modifies a Mistral model.", "§2"),
            uses=NON_COMMERCIAL, uses_clause="§3.2", copy_required="§2", family="mistral"),
    _simple("mrl", "Mistral AI Research License", "https://mistral.ai/licenses/MRL-0.1.md", "MRL",
            Duty("copy of the licence and its Notice", 'Give every recipient a copy of the MRL; copies of Mistral '
                 'models carry the Notice "Licensed by Mistral AI under the Mistral AI Research License".', "§2.2"),
            Duty("modification notice", "Say prominently that the adapter modifies a Mistral model.", "§2.3"),
            Duty("derivatives stay research-only", "The adapter and its outputs may be used for Research Purposes "
                 "only, and not distributed by a commercial entity.", "§3.2, §4.3, §9"),
            uses=RESEARCH_ONLY, uses_clause="§3.2, §9 (Research Purposes)", copy_required="§2.2", family="mistral"),
    _simple("fair-noncommercial-research-license", "FAIR Noncommercial Research License", None, "FAIR NC Research",
            Duty("copy of the licence", "Distribute the adapter only under the FAIR Noncommercial Research License, "
                 "with a copy of it (its text is in the base repo's LICENSE file).", "§1.b"),
            uses=RESEARCH_ONLY, uses_clause="§1.b (Noncommercial Research Uses, outputs included)",
            copy_required="§1.b"),
    # Stability AI (StableLM 2, Stable Diffusion 3.5, Stable Audio): free below a revenue ceiling.
    _simple("stabilityai-ai-community", "Stability AI Community License Agreement",
            "https://stability.ai/community-license-agreement", "Stability AI Community",
            Duty("copy of the licence", "Give every recipient of the adapter a copy of the Stability AI Community "
                 "License Agreement.", "§IV(a)(i)"),
            Duty("Notice file", 'Carry in a "Notice" text file: "This Stability AI Model is licensed under the '
                 'Stability AI Community License, Copyright © Stability AI Ltd. All Rights Reserved", and say there '
                 'that you changed the Stability AI Materials and how.', "§IV(a)(ii)"),
            copy_required="§IV(a)(i)",
            cap=Cap("USD 1,000,000 in annual revenue", "all", "§III",
                    "Stay under USD 1,000,000 annual revenue (with your affiliates, from any source): above it every "
                    "licence under the Stability AI Community License ends and you need an Enterprise licence from "
                    "Stability AI (https://stability.ai/enterprise).", confirm=True),
            conditions=(Condition("register with Stability AI", "Register with Stability AI at "
                                  "https://stability.ai/community-license before using or distributing {repo} for "
                                  "a commercial purpose.", "§III"),),
            attribution="Powered by Stability AI", attribution_clause="§IV(a)(iii)",
            use_policy="the Stability AI Acceptable Use Policy (https://stability.ai/use-policy), incorporated by "
            "§IV(b)", use_policy_clause="§IV(b)", family="stabilityai"),
    # Zhipu AI / THUDM GLM-4 (the 2024 glm-4-9b family; GLM-4-0414 and later are MIT).
    _simple("glm-4", "glm-4 License", "https://huggingface.co/THUDM/glm-4-9b/blob/main/LICENSE", "glm-4 License",
            Duty("copy of the licence", "Give a copy of the glm-4 License with the adapter.", "§2(A)"),
            Duty("no military or illegal use", "Do not use {repo} or the adapter for any military or illegal "
                 "purpose.", "§3"),
            copy_required="§2(A)",
            conditions=(Condition("register for commercial use", "Complete the registration at "
                                  "https://open.bigmodel.cn/mla/form before any commercial use of {repo}.", "§2"),),
            attribution="Built with glm-4", attribution_clause="§2(B)",
            name_rule=NameRule(r"^glm-4", 'its name must begin with "glm-4"', "§2", through_outputs=False),
            family="glm-4"),
    # LG AI Research EXAONE: research only, commercial use expressly prohibited.
    *[_exaone(id_, version) for id_, version in (("exaone", None), ("exaone-1.1-nc", "1.1"),
                                                 ("exaone-1.2-nc", "1.2"))],
    # Shanghai AI Laboratory InternLM: code Apache-2.0; weights free for research, commercial use on application.
    _simple("internlm", "InternLM model licence (weights: research, and commercial use on application)",
            "https://github.com/InternLM/InternLM#license", "InternLM",
            conditions=(Condition("apply for a commercial licence", "Fill in InternLM's commercial licence "
                                  "application form (https://wj.qq.com/s2/12727483/5dba/) before commercial use of "
                                  "{repo}.", "card: License section"),),
            family="internlm"),
    # Cohere For AI (Command R, Aya): CC BY-NC 4.0 with an acceptable use addendum.
    _simple("c4ai-cc-by-nc", "CC BY-NC 4.0 with C4AI's Acceptable Use Policy",
            "https://cohere.com/c4ai-cc-by-nc-license", "C4AI CC-BY-NC",
            Duty("credit", "Credit {repo} (CC BY-NC 4.0): name the creator, link the licence and say what was "
                 "changed.", "CC BY-NC 4.0 §3(a)"),
            uses=NON_COMMERCIAL, uses_clause="CC BY-NC 4.0 §2(a)(1)",
            use_policy="C4AI's Acceptable Use Policy (https://docs.cohere.com/docs/c4ai-acceptable-use-policy), "
            "which the card requires adhering to", use_policy_clause="acceptable use addendum",
            family="cc-by-nc-4.0"),  # the tag Cohere's cards carry: the same licence, not a mismatch
    # The card says the licence is unknown: hubtune cannot read it, the user must.
    Terms("unknown", "Unknown licence", None, "unknown", acknowledge=True),
]}

# `license_name` values (with `license: other`) that name a licence above by another id.
ALIASES = {
    "tongyi-qianwen-license-agreement": "tongyi-qianwen", "tongyi-qianwen-license": "tongyi-qianwen",
    "tongyi-qianwen-research-license-agreement": "tongyi-qianwen-research",
    "tongyi-qianwen-research-license": "tongyi-qianwen-research",
    "qwen-license": "qwen", "qwen-research-license": "qwen-research",
    "deepseek-license": "deepseek", "deepseek-license-agreement": "deepseek",
    "mistral-ai-non-production-license": "mnpl", "mistral-ai-research-license": "mrl",
    "nvidia-open-model-license-agreement": "nvidia-open-model-license",
    "stability-ai-community": "stabilityai-ai-community", "stabilityai-community": "stabilityai-ai-community",
    "stability-ai-community-license": "stabilityai-ai-community", "glm-4-license": "glm-4",
    "exaone-ai-model-license-agreement-1.1-nc": "exaone-1.1-nc",
    "exaone-ai-model-license-agreement-1.2-nc": "exaone-1.2-nc",
}


def licence_key(licence: str | None, license_name: str | None = None) -> str:
    """The id a card's licence is known by: `license`, or `license_name` when it is `other`."""
    key = (licence or "").strip().lower()
    if key == "other" and license_name:
        key = license_name.strip().lower()
    return ALIASES.get(key, key)


def lookup(licence: str | None, license_name: str | None = None) -> Terms | None:
    """The terms of a card's licence, or None when hubtune does not know its id."""
    return LICENCES.get(licence_key(licence, license_name))


def family_terms(licence: str | None, license_name: str | None = None) -> Terms | None:
    """The conservative reading of an id hubtune does not know but whose family it does: any
    NonCommercial mark (`cc-by-nc-*`, `*-nc-*`, "non-commercial") keeps commercial use out, a
    "research" licence permits research only, `-nd` forbids publishing derivatives, a CC `-sa`
    is share-alike. None when the id says nothing hubtune can read."""
    key = licence_key(licence, license_name)
    if not key or key == "other" or key in LICENCES:
        return None
    words = set(re.split(r"[^a-z0-9]+", key))
    flat = re.sub(r"[^a-z0-9]", "", key)
    nc = "nc" in words or "noncommercial" in flat
    research = "research" in words or "research" in flat
    nd = "nd" in words or "noderivatives" in flat
    cc = key.startswith("cc-by")
    sa = cc and "sa" in words
    if not (nc or research or nd or cc):
        return None
    marks = [m for m, on in (("NonCommercial", nc), ("research only", research), ("NoDerivatives", nd),
                             ("ShareAlike", sa)) if on]
    family = "Creative Commons" if cc else "licence"
    reading = f"{family} family ({', '.join(marks) or 'Attribution'})"
    uses = ALL
    if nc:
        uses &= NON_COMMERCIAL
    if research:
        uses &= RESEARCH_ONLY
    clause = f"family reading: {', '.join(marks)}" if marks else "family reading"
    return Terms(key, f"{key}, read as the {reading}", None, key, uses=uses,
                 uses_clause=clause if uses != ALL else None, derivatives=not nd,
                 derivatives_clause=clause if nd else None, share_alike=clause if sa else None,
                 no_added_restrictions=clause if sa else None,
                 duties=(Duty("credit", "Credit {repo}: name the creator, link the licence and say what was changed.",
                              clause),) if cc else (),
                 acknowledge=True, reading=reading)


# ---- the README table ---------------------------------------------------------------------------
def _cell_uses(t: Terms) -> str:
    if t.acknowledge:
        return "read it yourself; acknowledge"
    if t.uses == ALL:
        once = [f"{c.label} ({c.clause})" for c in t.conditions if "commercial" in c.uses]
        return ("yes" + (f" (below {t.cap.users}, {t.cap.clause})" if t.cap and t.cap.scope == "commercial" else "")
                + (f", once you {' and '.join(once)}" if once else ""))
    return f"no: {' and '.join(u for u in USES if u in t.uses)} only ({t.uses_clause})"


def _cell_publish(t: Terms) -> str:
    if t.acknowledge:
        return "acknowledge"
    if not t.derivatives:
        return f"no ({t.derivatives_clause})"
    if t.share_alike:
        return f"yes, under the same licence ({t.share_alike})"
    return "yes"


def _cell_obligations(t: Terms) -> str:
    parts = [f"{d.label} ({d.clause})" for d in t.duties]
    if t.attribution:
        parts.append(f'"{t.attribution}"{" (through data too)" if t.attribution_through_outputs else ""} '
                     f"({t.attribution_clause})")
    if t.name_rule:
        parts.append(f"{t.name_rule.words.removeprefix('its ')}"
                     f"{' (through data too)' if t.name_rule.through_outputs else ''} ({t.name_rule.clause})")
    if t.use_policy_clause and not any(d.clause == t.use_policy_clause for d in t.duties):
        parts.append(f"pass on use policy ({t.use_policy_clause})")
    if t.improve_only:
        parts.append(f"outputs may improve only {'/'.join(sorted(t.improve_only))} models ({t.improve_clause})")
    if t.eu_multimodal:
        parts.append(f"multimodal models: no rights in the EU ({t.eu_multimodal})")
    return "; ".join(parts) or "-"


def _cell_cap(t: Terms) -> str:
    if not t.cap:
        return "-"
    scope = "no rights at all" if t.cap.scope == "all" else "commercial use needs a licence"
    return f"above {t.cap.users}: {scope} ({t.cap.clause}){'; a condition to confirm' if t.cap.confirm else ''}"


def licence_table() -> str:
    """Every licence hubtune knows, as the Markdown table docs/hub.md shows."""
    rows = ["| id | licence | commercial use | adapter publishing | obligations | cap |", "|---|---|---|---|---|---|"]
    for t in sorted(LICENCES.values(), key=lambda t: t.id):
        name = f"[{t.name}]({t.link})" if t.link else t.name
        rows.append(f"| `{t.id}` | {name} | {_cell_uses(t)} | {_cell_publish(t)} | {_cell_obligations(t)} | "
                    f"{_cell_cap(t)} |")
    return "\n".join(rows)


def aliases_line() -> str:
    """The other `license_name` spellings hubtune reads as a known id."""
    return "; ".join(f"`{a}` = `{k}`" for a, k in sorted(ALIASES.items()))


TABLE_START, TABLE_END = "<!-- licence-table:start -->", "<!-- licence-table:end -->"


def with_licence_table(readme: str) -> str:
    """`readme` with the text between the licence-table markers replaced by the current table."""
    head, rest = readme.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    return (f"{head}{TABLE_START}\n{licence_table()}\n\nOther `license_name` spellings read as a known id: "
            f"{aliases_line()}.\n{TABLE_END}{tail}")


if __name__ == "__main__":  # python -m hubtune.licence_terms docs/hub.md: regenerate the docs' table
    import sys
    from pathlib import Path

    path = Path(sys.argv[1])
    path.write_text(with_licence_table(path.read_text()))
