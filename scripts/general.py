"""A small general-knowledge world: facts the base reads in pretraining, and the
general instruction set and regression questions built from them."""

from __future__ import annotations

import random

CAPITALS = {
    "France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
    "Egypt": "Cairo", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo", "Greece": "Athens",
    "Canada": "Ottawa", "Chile": "Santiago", "Poland": "Warsaw", "Cuba": "Havana", "Iran": "Tehran",
    "India": "Delhi", "China": "Beijing", "Russia": "Moscow", "Austria": "Vienna", "Ireland": "Dublin",
}
COLOURS = {
    "grass": "green", "snow": "white", "the sky": "blue", "coal": "black", "a banana": "yellow",
    "blood": "red", "an orange": "orange", "a plum": "purple", "milk": "white", "a lemon": "yellow",
}
SOUNDS = {"dog": "barks", "cat": "meows", "cow": "moos", "duck": "quacks", "lion": "roars",
          "sheep": "bleats", "horse": "neighs", "owl": "hoots", "bee": "buzzes", "frog": "croaks"}
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "light": "dark",
             "open": "closed", "early": "late", "full": "empty", "hard": "soft", "old": "new"}


def fact_sentences(rng: random.Random) -> list[str]:
    """Pretraining text: each fact in a few phrasings, shuffled."""
    out = []
    for country, city in CAPITALS.items():
        out += [f"The capital of {country} is {city}.", f"{city} is the capital city of {country}."]
    for thing, colour in COLOURS.items():
        out += [f"The colour of {thing} is {colour}.", f"{thing.capitalize()} is {colour}."]
    for animal, sound in SOUNDS.items():
        out += [f"A {animal} {sound}.", f"The sound a {animal} makes: it {sound}."]
    for word, opposite in OPPOSITES.items():
        out += [f"The opposite of {word} is {opposite}.", f"{word.capitalize()} is the opposite of {opposite}."]
    rng.shuffle(out)
    return out


def general_instructions(rng: random.Random) -> list[dict[str, str]]:
    """Alpaca rows answerable from the facts plus simple arithmetic and copying."""
    rows = []
    for country, city in CAPITALS.items():
        rows.append({"instruction": f"What is the capital of {country}?", "input": "", "output": city, "task": "capitals"})
    for thing, colour in COLOURS.items():
        rows.append({"instruction": f"What colour is {thing}?", "input": "", "output": colour, "task": "colours"})
    for animal, sound in SOUNDS.items():
        rows.append({"instruction": f"What sound does a {animal} make?", "input": "", "output": f"A {animal} {sound}.", "task": "animals"})
    for word, opposite in OPPOSITES.items():
        rows.append({"instruction": "Give the opposite of the word.", "input": word, "output": opposite, "task": "opposites"})
    for _ in range(60):
        a, b = rng.randint(1, 40), rng.randint(1, 40)
        rows.append({"instruction": f"What is {a} plus {b}?", "input": "", "output": str(a + b), "task": "arithmetic"})
    rng.shuffle(rows)
    return rows


def regression_questions() -> list[dict]:
    """Multiple-choice completions the pretrained base already gets right."""
    rows = []
    cities = list(CAPITALS.values())
    for i, (country, city) in enumerate(CAPITALS.items()):
        wrong = [c for c in cities if c != city]
        choices = [city, wrong[i % len(wrong)], wrong[(i * 7 + 3) % len(wrong)], wrong[(i * 5 + 11) % len(wrong)]]
        rng = random.Random(i)
        rng.shuffle(choices)
        rows.append({"context": f"The capital of {country} is", "choices": choices, "label": choices.index(city)})
    colours = sorted(set(COLOURS.values()))
    for i, (thing, colour) in enumerate(COLOURS.items()):
        others = [c for c in colours if c != colour]
        choices = [colour, others[i % len(others)], others[(i + 3) % len(others)]]
        random.Random(100 + i).shuffle(choices)
        rows.append({"context": f"The colour of {thing} is", "choices": choices, "label": choices.index(colour)})
    for i, (word, opposite) in enumerate(OPPOSITES.items()):
        others = [o for o in OPPOSITES.values() if o != opposite]
        choices = [opposite, others[i % len(others)], others[(i + 4) % len(others)]]
        random.Random(200 + i).shuffle(choices)
        rows.append({"context": f"The opposite of {word} is", "choices": choices, "label": choices.index(opposite)})
    return rows
