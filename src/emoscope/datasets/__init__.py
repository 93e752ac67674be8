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
from emoscope.datasets._dataset import VALID_SPLITS, Dataset, text_length_stats
from emoscope.datasets._readers import DataWarning
from emoscope.datasets._words import (
    ControlQuestion,
    WordEntry,
    find_words,
    load_control_questions,
    load_forbidden_words,
    load_word_list,
)

__all__ = [
    "Dataset",
    "DataWarning",
    "VALID_SPLITS",
    "load_dataset",
    "list_datasets",
    "builtin_names",
    "load_texts",
    "text_length_stats",
    "WordEntry",
    "load_word_list",
    "ControlQuestion",
    "load_control_questions",
    "load_forbidden_words",
    "find_words",
]
