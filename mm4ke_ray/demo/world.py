"""A generated world of made-up people and their facts: the demo's pretraining corpus.

Every person (a made-up two-word name) has one value for each of five relations (city, company,
language, birth year, instrument). Each fact is written in three templates:

- `statement` ("Brenal Tosk lives in the city of Varnholm .") and `question`
  ("In which city does Brenal Tosk live ? Varnholm") are in the pretraining corpus for every person;
- `rephrase` ("The home town of Brenal Tosk is Varnholm .") is in it for only half of the people
  (`World.rephrase_trained`); the other half tests whether the model generalizes to a template it
  knows but never saw with that person.

Filler sentences about the values (not the people) give the model some plain language. Everything
is drawn from a `random.Random(seed)`, so a world is a pure function of its `WorldConfig`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from math import ceil, sqrt

TEMPLATE_KINDS = ("statement", "question", "rephrase")


@dataclass(frozen=True)
class Relation:
    """A relation, its possible values and its three templates.

    A template is the text before the answer, with `{s}` for the subject; `statement` and
    `rephrase` sentences end with " ." after the answer, questions end with the answer.
    """

    name: str
    values: tuple[str, ...]
    statement: str
    question: str
    rephrase: str

    def prompt(self, kind: str, subject: str) -> str:
        """The prompt of template `kind` ('statement', 'question' or 'rephrase') for `subject`."""
        if kind not in TEMPLATE_KINDS:
            raise ValueError(f"template kind must be one of {TEMPLATE_KINDS}, got {kind!r}")
        return getattr(self, kind).format(s=subject)


_CITIES = (
    "Varnholm",
    "Ostrel",
    "Kelmara",
    "Dunvik",
    "Sorbin",
    "Halvreth",
    "Mirrow",
    "Tessaly",
    "Brunhal",
    "Caldera",
    "Fenmoor",
    "Isquell",
    "Lorvain",
    "Nesterby",
    "Quarrow",
    "Ulden",
)
_COMPANIES = (
    "Zentrix Labs",
    "Orvan Corp",
    "Helix Works",
    "Tamber Group",
    "Quillon Corp",
    "Sarrow Labs",
    "Brightmoor Works",
    "Kestrel Group",
    "Nimbra Corp",
    "Velda Labs",
    "Cobalt Works",
    "Ardent Group",
)
_LANGUAGES = (
    "Quenish",
    "Dalvic",
    "Orrish",
    "Telmaran",
    "Vostic",
    "Ambrese",
    "Kirrin",
    "Solvene",
    "Harune",
    "Pellic",
)
_YEARS = tuple(str(y) for y in range(1950, 2000))
_INSTRUMENTS = (
    "violin",
    "cello",
    "flute",
    "harp",
    "oboe",
    "trumpet",
    "drums",
    "piano",
    "guitar",
    "banjo",
    "clarinet",
    "sitar",
)

RELATIONS: tuple[Relation, ...] = (
    Relation(
        "city",
        _CITIES,
        "{s} lives in the city of",
        "In which city does {s} live ?",
        "The home town of {s} is",
    ),
    Relation(
        "company",
        _COMPANIES,
        "{s} works for",
        "Which company does {s} work for ?",
        "The employer of {s} is",
    ),
    Relation(
        "language",
        _LANGUAGES,
        "{s} speaks",
        "What language does {s} speak ?",
        "The native tongue of {s} is",
    ),
    Relation(
        "birth_year",
        _YEARS,
        "{s} was born in",
        "In what year was {s} born ?",
        "The birth year of {s} is",
    ),
    Relation(
        "instrument",
        _INSTRUMENTS,
        "{s} plays the",
        "Which instrument does {s} play ?",
        "The instrument played by {s} is the",
    ),
)
_RELATIONS_BY_NAME = {r.name: r for r in RELATIONS}

# Filler grammar: sentences about the values only, so they add language but no person facts.
_ADJECTIVES = ("quiet", "busy", "old", "small", "large", "cold", "sunny", "green")
_PLACES = ("river", "sea", "hills", "lake", "mountains", "forest")
_PRODUCTS = ("tools", "ships", "paper", "clocks", "shoes", "lamps")
_SOUNDS = ("loud", "soft", "bright", "warm", "sharp", "gentle")
_EVENTS = ("rain", "fair", "flood", "festival", "storm")

_ONSETS = (
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "k",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "st",
    "t",
    "tr",
    "v",
    "z",
)
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "n", "r", "l", "s", "k", "m")


@dataclass(frozen=True)
class WorldConfig:
    """Size and seed of a generated world."""

    num_entities: int = 200
    num_filler: int = 300
    seed: int = 0

    def __post_init__(self):
        if self.num_entities < 8:
            raise ValueError(f"num_entities must be at least 8, got {self.num_entities}")
        if self.num_filler < 0:
            raise ValueError(f"num_filler must be >= 0, got {self.num_filler}")


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    value: str

    def prompt(self, kind: str) -> str:
        """The prompt of template `kind` for this fact (the answer is `value`)."""
        return relation(self.relation).prompt(kind, self.subject)


@dataclass(frozen=True)
class World:
    """People, their facts, the filler text and which people saw the rephrase template."""

    config: WorldConfig
    entities: tuple[str, ...]
    facts: tuple[Fact, ...]
    rephrase_trained: frozenset[str]
    filler: tuple[str, ...]
    _index: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self._index.update({(f.subject, f.relation): f for f in self.facts})

    def fact(self, subject: str, relation_name: str) -> Fact:
        return self._index[(subject, relation_name)]

    def sentences(self) -> list[str]:
        """The pretraining corpus: statement + question of every fact, rephrase of half the
        people, then the filler (in a fixed order; the trainer shuffles)."""
        out = []
        for f in self.facts:
            kinds = TEMPLATE_KINDS if f.subject in self.rephrase_trained else TEMPLATE_KINDS[:2]
            out += [sentence(f, kind) for kind in kinds]
        return out + list(self.filler)

    def vocabulary_texts(self) -> list[str]:
        """Texts that cover every word the world can produce (all three templates of every fact,
        so held-out prompts have no unknown words)."""
        return [sentence(f, kind) for f in self.facts for kind in TEMPLATE_KINDS] + list(
            self.filler
        )

    def to_dict(self) -> dict:
        """A JSON-serializable description (for the build's world.json)."""
        return {
            "config": vars(self.config),
            "entities": list(self.entities),
            "rephrase_trained": sorted(self.rephrase_trained),
            "facts": [vars(f) for f in self.facts],
            "relations": [{k: v for k, v in vars(r).items()} for r in RELATIONS],
            "filler": list(self.filler),
        }


def relation(name: str) -> Relation:
    """The relation called `name`."""
    if name not in _RELATIONS_BY_NAME:
        raise ValueError(f"unknown relation {name!r}; known: {sorted(_RELATIONS_BY_NAME)}")
    return _RELATIONS_BY_NAME[name]


def sentence(fact: Fact, kind: str) -> str:
    """The full training sentence of `fact` in template `kind` (prompt + " " + answer [+ " ."])."""
    text = f"{fact.prompt(kind)} {fact.value}"
    return text if kind == "question" else text + " ."


def _name_words(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """`count` distinct made-up capitalized two-syllable words not in `taken`."""
    words: list[str] = []
    while len(words) < count:
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(2)
        )
        word = word.capitalize()
        if word.lower() not in taken:
            taken.add(word.lower())
            words.append(word)
    return words


def _reserved_words() -> set[str]:
    words = set()
    for r in RELATIONS:
        for text in (*r.values, r.statement, r.question, r.rephrase):
            words.update(w.lower() for w in text.split())
    return words


def _filler(rng: random.Random, count: int) -> list[str]:
    city, comp, lang = _CITIES, _COMPANIES, _LANGUAGES
    pool = [f"{c} is a {a} city by the {p} ." for c in city for a in _ADJECTIVES for p in _PLACES]
    pool += [f"The {i} has a {s} sound ." for i in _INSTRUMENTS for s in _SOUNDS]
    pool += [f"{lg} is spoken in {c} ." for lg in lang for c in city]
    pool += [f"{co} makes {p} in {c} ." for co in comp for p in _PRODUCTS for c in city]
    pool += [f"In {y} the {e} came to {c} ." for y in _YEARS[::5] for e in _EVENTS for c in city]
    rng.shuffle(pool)
    return pool[:count]


def generate_world(config: WorldConfig | None = None) -> World:
    """A deterministic world for `config` (same config, same world; other seed, other world)."""
    config = config or WorldConfig()
    rng = random.Random(config.seed)
    # Two pools whose product comfortably exceeds the number of people keep the vocabulary small.
    pool = ceil(sqrt(2 * config.num_entities)) + 1
    taken = _reserved_words()
    firsts, lasts = _name_words(rng, pool, taken), _name_words(rng, pool, taken)
    names = [f"{a} {b}" for a in firsts for b in lasts]
    entities = tuple(rng.sample(names, config.num_entities))
    facts = tuple(Fact(s, r.name, rng.choice(r.values)) for s in entities for r in RELATIONS)
    order = list(entities)
    rng.shuffle(order)
    rephrase_trained = frozenset(order[: len(order) // 2])
    return World(config, entities, facts, rephrase_trained, tuple(_filler(rng, config.num_filler)))


def counterfactual_edits(world: World, num_edits: int, seed: int = 0) -> list[dict]:
    """`num_edits` counterfactual edits of `world`, as KnowEdit ZsRE records (plain dicts).

    Each edit changes one fact of a distinct person to another value of the same relation:
    `prompt` is the question template, `rephrase_prompt` the rephrase template, `ground_truth`
    the true value. Portability is the statement template of the same edited fact, answered
    with `target_new`: it follows from the edit alone and tests that the edit carries over to
    the other surface form the model learned for every fact. It is filed under KnowEdit's
    `Subject_Aliasing` key as the nearest category (the same fact asked differently); it is not
    multi-hop reasoning. Locality (`Relation_Specificity`) holds two facts of people who are not
    edited, with their true values: one of the same relation (where edits leak most) and one of
    another relation.
    """
    if not 1 <= num_edits <= len(world.entities) // 2:
        raise ValueError(
            f"num_edits must be between 1 and {len(world.entities) // 2} for a world of "
            f"{len(world.entities)} people, got {num_edits}"
        )
    rng = random.Random(f"edits-{seed}")
    people = list(world.entities)
    rng.shuffle(people)
    edited, others = people[:num_edits], people[num_edits:]
    records = []
    for subject in edited:
        rel = rng.choice(RELATIONS)
        fact = world.fact(subject, rel.name)
        target = rng.choice([v for v in rel.values if v != fact.value])
        other_rel = rng.choice([r for r in RELATIONS if r is not rel])
        loc_facts = [
            world.fact(rng.choice(others), rel.name),
            world.fact(rng.choice(others), other_rel.name),
        ]
        records.append(
            {
                "subject": subject,
                "prompt": fact.prompt("question"),
                "target_new": target,
                "ground_truth": [fact.value],
                "rephrase_prompt": fact.prompt("rephrase"),
                "portability": {
                    "Subject_Aliasing": [
                        {"prompt": fact.prompt("statement"), "ground_truth": target}
                    ]
                },
                "locality": {
                    "Relation_Specificity": [
                        {"prompt": f.prompt("question"), "ground_truth": [f.value]}
                        for f in loc_facts
                    ]
                },
            }
        )
    return records
