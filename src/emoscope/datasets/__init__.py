"""Datasets: built-in emotion, neutral and concept sets written for emoscope, and loaders
for the user's own JSONL / CSV / text files.

Built-ins (``emoscope datasets`` lists them; each has a card with length statistics):

- ``emotions-basic``: gratitude, anger, apology, neutral; grouped by scenario.
- ``emotions-12``: 12 emotions + neutral, implicit (no emotion word), length-matched.
- ``emotions-12-explicit``: the same classes, texts that name the emotion.
- ``neutral-corpus``, ``neutral-starts``: neutral sentences and generation prompts.
- ``length-confound``: a planted confound (labels differ only in length).
- ``concepts``, ``baseline-words``: words for concept injection.
- ``control-questions``: yes/no questions whose answer is "no".

>>> from emoscope.datasets import load_dataset
>>> ds = load_dataset("emotions-basic")
>>> ds.classes
['anger', 'apology', 'gratitude', 'neutral']
>>> train = ds.filter(split="train")
"""

from __future__ import annotations

from emoscope.datasets._catalog import builtin_names, list_datasets, load_dataset, load_texts
from emoscope.datasets._dataset import Dataset
from emoscope.datasets._readers import DataWarning
from emoscope.datasets._words import (
    WordEntry,
    find_words,
    load_control_questions,
    load_forbidden_words,
    load_word_list,
)

__all__ = [
    "Dataset",
    "DataWarning",
    "load_dataset",
    "list_datasets",
    "load_texts",
    "load_word_list",
    "load_control_questions",
    "load_forbidden_words",
    "WordEntry",
    "builtin_names",
    "find_words",
]
