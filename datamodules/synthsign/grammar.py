"""Sentences: a small grammar with sign-language order, realised as German-like or Chinese-like
spoken text with a different word order and function words.

Gloss order is topic-comment, verb-final, adjective after noun, wh-word and negation at the end
(as in DGS/CSL glossing): TIME PLACE SUBJECT [ADJ] OBJECT [ADJ] VERB [NICHT] [WAS].
German-like text is verb-second with articles, inflection and a preposition for the place;
Chinese-like text is subject-place-verb-object with 在/不/的 and full-width punctuation. Example:
NUFI POLO NAGUR GANAS NICHT -> "nufi ganast der nagure polo nicht" / "虆蜰，揻渵的烻愡不锷嗀。"
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from datamodules.synthsign.lexicon import Entry

# Roles in gloss (signing) order.
ROLES = ("time", "place", "subject", "subject_adj", "object", "object_adj", "verb", "negation",
         "question")
_ROLE_CATEGORY = {"time": "time", "place": "place", "subject": "noun", "subject_adj": "adjective",
                  "object": "noun", "object_adj": "adjective", "verb": "verb",
                  "negation": "negation", "question": "question"}
MIN_GLOSSES, MAX_GLOSSES = 2, 7  # SynthSign sentences have 2-7 glosses
# Optional roles, dropped in this order while a sentence is longer than MAX_GLOSSES.
_DROP_ORDER = ("subject_adj", "object_adj", "place", "time")
LANGUAGES = ("de", "zh")


@dataclass(frozen=True)
class Sentence:
    """Role -> lexicon entry; the gloss sequence and both texts are derived from it."""

    roles: dict[str, Entry]

    @property
    def glosses(self) -> list[Entry]:
        return [self.roles[r] for r in ROLES if r in self.roles]


class Decks:
    """One shuffled deck per category, dealt round-robin and reshuffled when empty, so a split
    with enough slots uses every gloss (a plain random draw would leave rare glosses out)."""

    def __init__(self, lexicon: list[Entry], rng: random.Random):
        self.rng = rng
        self.pools: dict[str, list[Entry]] = {}
        for entry in lexicon:
            self.pools.setdefault(entry.category, []).append(entry)
        self.decks: dict[str, list[Entry]] = {c: [] for c in self.pools}

    def draw(self, category: str, avoid: Entry | None = None) -> Entry:
        deck = self.decks[category]
        if not deck:
            deck.extend(self.pools[category])
            self.rng.shuffle(deck)
        if deck[-1] is avoid and len(deck) > 1:  # subject and object must differ
            deck[-1], deck[0] = deck[0], deck[-1]
        return deck.pop()


def sample_sentence(decks: Decks, rng: random.Random) -> Sentence:
    """Draw which optional roles are present, trim to MAX_GLOSSES, then deal the glosses."""
    present = {"subject", "verb"}
    question = rng.random() < 0.15
    optional = {"time": 0.5, "place": 0.35, "subject_adj": 0.3, "negation": 0.2}
    present |= {role for role, p in optional.items() if rng.random() < p}
    if question:
        present.add("question")  # "was" takes the object's place
    elif rng.random() < 0.55:
        present.add("object")
        if rng.random() < 0.3:
            present.add("object_adj")
    for role in _DROP_ORDER:
        if len(present) <= MAX_GLOSSES:
            break
        present.discard(role)
    roles: dict[str, Entry] = {}
    for role in ROLES:
        if role in present:
            avoid = roles.get("subject") if role == "object" else None
            roles[role] = decks.draw(_ROLE_CATEGORY[role], avoid)
    return Sentence(roles)


def _noun_phrase_de(noun: Entry, adj: Entry | None, accusative: bool) -> list[str]:
    article = "den" if accusative and noun.gender == "der" else noun.gender
    words = [article]
    if adj is not None:
        words.append(adj.de + ("en" if article == "den" else "e"))
    return words + [noun.de]


def realise_de(sentence: Sentence) -> str:
    """German-like text: lower-case words, verb second, no punctuation (PHOENIX style)."""
    r = sentence.roles
    verb = r["verb"].de + "t"
    subject = _noun_phrase_de(r["subject"], r.get("subject_adj"), accusative=False)
    obj = _noun_phrase_de(r["object"], r.get("object_adj"), True) if "object" in r else []
    negation = ["nicht"] if "negation" in r else []
    place = []
    if "place" in r:
        place = (["in", "der"] if r["place"].gender == "die" else ["im"]) + [r["place"].de]
    time = [r["time"].de] if "time" in r else []
    if "question" in r:  # wh-word first, the time adverb moves after the subject
        words = ["was", verb] + subject + negation + time + place
    elif time:  # fronted time adverb, verb second
        words = time + [verb] + subject + obj + negation + place
    else:
        words = subject + [verb] + obj + negation + place
    return " ".join(words)


def realise_zh(sentence: Sentence) -> str:
    """Chinese-like text: characters without spaces, 在/不/的 function words, full-width
    punctuation; a fronted time word is followed by a comma (CSL-Daily style)."""
    r = sentence.roles

    def noun_phrase(noun: str, adj: str) -> str:
        return r[adj].zh + "的" + r[noun].zh if adj in r else r[noun].zh

    text = r["time"].zh + "，" if "time" in r else ""
    text += noun_phrase("subject", "subject_adj")
    text += "在" + r["place"].zh if "place" in r else ""
    text += "不" if "negation" in r else ""
    text += r["verb"].zh
    text += noun_phrase("object", "object_adj") if "object" in r else ""
    return text + (r["question"].zh + "？" if "question" in r else "。")


def realise(sentence: Sentence, language: str) -> str:
    if language == "de":
        return realise_de(sentence)
    if language == "zh":
        return realise_zh(sentence)
    raise ValueError(f"unknown spoken language {language!r}; expected one of {LANGUAGES}")


def spoken_vocabulary(lexicon: list[Entry], language: str) -> list[str]:
    """Every word (de) or character (zh) the grammar can emit for this lexicon, as a few lines:
    function words first, then one line per gloss with all its inflected forms."""
    if language == "de":
        lines = ["der die das den im in nicht was"]
        suffixes = {"verb": ("t",), "adjective": ("e", "en")}
        lines += [" ".join(e.de + s for s in suffixes.get(e.category, ("",))) for e in lexicon]
        return lines
    if language == "zh":
        return ["在不的什么，。？"] + [e.zh for e in lexicon]
    raise ValueError(f"unknown spoken language {language!r}; expected one of {LANGUAGES}")
