"""Randomized synthetic audit prompts (the rng is passed in).

Never a user's prompt, and not a fixed list a cheat could recognise: each prompt is assembled
from a few templates, word pools and random numbers, so no two audits send the same text. They
read like the short everyday chats a mesh carries (a request, a fact question, a small task).
"""

from __future__ import annotations

import random

_SUBJECTS = ("the moon", "a river", "coffee", "bicycles", "the ocean", "winter", "a garden",
             "old maps", "trains", "honey bees", "the desert", "a small town", "libraries",
             "thunderstorms", "chess", "volcanoes", "paper boats", "lighthouses", "owls",
             "bread", "mountains", "clocks", "the wind", "a market", "glaciers", "kites")
_TASKS = ("Write one sentence about {s}.", "Describe {s} in a few words.",
          "Tell me a fact about {s}.", "What is interesting about {s}?",
          "Give me a short title for a story about {s} and {t}.",
          "Compare {s} and {t} in one line.", "Start a poem about {s}.",
          "What is {a} plus {b}?", "List three words that rhyme with {w}.",
          "Continue the list: {a}, {b}, {c},", "Why do people like {s}?",
          "Explain {s} to a child.", "Name a color that reminds you of {s}.",
          "Spell the word {w} backwards.", "Is {a} larger than {b}? Answer briefly.")
_WORDS = ("light", "stone", "cloud", "river", "dream", "green", "table", "night", "bright",
          "house", "storm", "sound", "field", "flame", "ridge", "shore")
_OPENERS = ("", "", "", "Hi! ", "Quick question: ", "Please help. ", "Hello. ")
_TAILS = ("", "", "", " Keep it short.", " Use at most {n} words.", " Be brief.",
          " One line, please.", " Thanks!")


def audit_prompt(rng: random.Random) -> str:
    """One fresh prompt, under 200 characters."""
    s, t = rng.sample(_SUBJECTS, 2)
    a, b = rng.randint(2, 999), rng.randint(2, 999)
    c = b + (b - a)
    task = rng.choice(_TASKS).format(s=s, t=t, a=a, b=b, c=c, w=rng.choice(_WORDS))
    return rng.choice(_OPENERS) + task + rng.choice(_TAILS).format(n=rng.randint(5, 30))
