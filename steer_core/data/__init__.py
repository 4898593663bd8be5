"""A steer's data: where labelled texts come from (``sources``, ``corpora``), how they are cleaned (``clean``) and
turned into training files, prompts and a data card (``prepare``); ``records`` reads the files."""

from steer_core.data.prepare import DataCard, Example, build_prompts, prepare
from steer_core.data.records import DataError, Record, load_jsonl, read_table, read_training_file
from steer_core.data.sources import load_source

__all__ = ["DataCard", "DataError", "Example", "Record", "build_prompts", "load_jsonl", "load_source", "prepare",
           "read_table", "read_training_file"]
