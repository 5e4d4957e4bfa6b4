"""Synthetic invoices: the demo task and the text the demo base is pretrained on.

One generator serves both so that the base has read invoices in every layout
before it is asked to extract from them. Everything is driven by a seeded
`random.Random`, so a seed gives the same rows on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MATERIALS = [
    "Steel", "Copper", "Brass", "Oak", "Pine", "Glass", "Rubber", "Nylon", "Cotton", "Wool",
    "Silver", "Bronze", "Marble", "Cedar", "Linen", "Iron", "Velvet", "Maple", "Canvas", "Leather",
]
QUALIFIERS = [
    "Hex", "Round", "Small", "Large", "Flat", "Heavy", "Mini", "Long", "Short", "Thin",
    "Double", "Square", "Soft", "Wide", "Narrow", "Deep",
]
NOUNS = [
    "Bolt", "Pipe", "Hinge", "Shelf", "Lamp", "Chair", "Table", "Rope", "Hook", "Valve",
    "Drill", "Brush", "Bucket", "Cable", "Clamp", "Ladder", "Mirror", "Panel", "Spring", "Washer",
    "Bracket", "Handle", "Basket", "Blanket", "Bottle", "Candle", "Kettle", "Pillow", "Tray", "Vase",
]
CUSTOMERS = [
    "Acme Ltd", "Northwind", "Blue Harbor", "Greenfield Co", "Redstone Inc", "Silver Lake",
    "Oakridge", "Summit Works", "Riverside", "Maple Street Shop", "Harbor Tools", "Bright Homes",
]
CITIES = ["Leeds", "Austin", "Lyon", "Porto", "Oslo", "Dublin", "Denver", "Turin", "Ghent", "Perth"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

INSTRUCTIONS = [
    "Extract all product names and prices from this invoice text.",
    "List every product on this invoice with its unit price.",
    "Read the invoice below and extract each product name and its price.",
]


@dataclass(frozen=True)
class Item:
    name: str
    qty: int
    price: str  # unit price, two decimals, no currency sign


def product_name(rng: random.Random) -> str:
    words = [rng.choice(MATERIALS)]
    if rng.random() < 0.5:
        words.append(rng.choice(QUALIFIERS))
    words.append(rng.choice(NOUNS))
    return " ".join(words)


def price(rng: random.Random) -> str:
    whole = rng.choice([rng.randint(1, 9), rng.randint(10, 99), rng.randint(100, 499)])
    cents = rng.choice(["00", "50", "99", "25", "75", f"{rng.randint(0, 99):02d}"])
    return f"{whole}.{cents}"


def items(rng: random.Random, lo: int = 1, hi: int = 4) -> list[Item]:
    names: list[str] = []
    while len(names) < rng.randint(lo, hi):
        name = product_name(rng)
        if name not in names:
            names.append(name)
    return [Item(n, rng.randint(1, 12), price(rng)) for n in names]


def _header(rng: random.Random) -> str:
    number = rng.randint(1000, 99999)
    date = f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(2019, 2026)}"
    customer = rng.choice(CUSTOMERS)
    return rng.choice([
        f"INVOICE #{number}\nDate: {date}\nBill to: {customer}, {rng.choice(CITIES)}",
        f"Invoice no. {number} - {customer}\nIssued {date}",
        f"{customer}\nInvoice {number} ({date})",
    ])


def _total(its: list[Item]) -> str:
    return f"{sum(i.qty * float(i.price) for i in its):.2f}"


def _table(its: list[Item], rng: random.Random) -> str:
    rows = ["| Item | Qty | Unit price |", "|---|---|---|"]
    rows += [f"| {i.name} | {i.qty} | ${i.price} |" for i in its]
    return "\n".join(rows) + f"\nTotal: ${_total(its)}"


def _lines(its: list[Item], rng: random.Random) -> str:
    return "\n".join(f"{i.name} x{i.qty} @ ${i.price}" for i in its) + f"\nAmount due: ${_total(its)}"


def _dotted(its: list[Item], rng: random.Random) -> str:
    return "\n".join(f"{i.qty} x {i.name} ..... {i.price} USD" for i in its) + f"\nTOTAL {_total(its)} USD"


def _csv(its: list[Item], rng: random.Random) -> str:
    return "product,quantity,price\n" + "\n".join(f"{i.name},{i.qty},{i.price}" for i in its)


def _prose(its: list[Item], rng: random.Random) -> str:
    parts = [f"{i.qty} {i.name} at ${i.price} each" for i in its]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"This invoice covers {body}. Please pay ${_total(its)} within 30 days."


def _blocks(its: list[Item], rng: random.Random) -> str:
    return "\n\n".join(f"Product: {i.name}\nQuantity: {i.qty}\nPrice: ${i.price}" for i in its)


LAYOUTS = [_table, _lines, _dotted, _csv, _prose, _blocks]


def invoice(its: list[Item], rng: random.Random) -> str:
    """One invoice document in a random layout."""
    return _header(rng) + "\n\n" + rng.choice(LAYOUTS)(its, rng)


def answer(its: list[Item]) -> str:
    """The task's reference output: the one layout the fine-tune has to learn."""
    return "Products:\n" + "\n".join(f"- {i.name}: ${i.price}" for i in its)


# Re-listings the base reads in pretraining. None is the task's answer layout:
# the base learns to copy records, the fine-tune teaches it which layout to write.
def _relist_inline(its: list[Item]) -> str:
    return "Items: " + "; ".join(f"{i.name} ({i.price})" for i in its)


def _relist_costs(its: list[Item]) -> str:
    return "\n".join(f"{i.name} costs {i.price} dollars." for i in its)


def _relist_json(its: list[Item]) -> str:
    return "[" + ", ".join(f'{{"name": "{i.name}", "price": {i.price}}}' for i in its) + "]"


def _relist_numbered(its: list[Item]) -> str:
    return "\n".join(f"{n}. {i.name} = {i.price}" for n, i in enumerate(its, 1))


RELISTINGS = [_relist_inline, _relist_costs, _relist_json, _relist_numbered]
RELIST_HEADERS = ["Summary of items:", "In short:", "Line items:", "Recap:"]


def relisting(its: list[Item], rng: random.Random) -> str:
    return rng.choice(RELIST_HEADERS) + "\n" + rng.choice(RELISTINGS)(its)


def task_example(rng: random.Random) -> dict[str, str]:
    its = items(rng)
    return {"instruction": rng.choice(INSTRUCTIONS), "input": invoice(its, rng), "output": answer(its)}
