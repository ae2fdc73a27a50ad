"""Edit data: readers for KnowEdit / zsre_mend / alpaca / CounterFact sources -> one EditRecord type.

Flow: config → [data] → rsft → merge → evaluate → search → tracking → export, commands on top.
"""

from mm4ke_ray.data.formats import (
    EditFormat,
    FormatRegistry,
    get_format,
    known_formats,
    register_format,
)
from mm4ke_ray.data.readers import EditDataset, load_edit_records, write_edit_records
from mm4ke_ray.data.records import QA, EditRecord

__all__ = [
    "QA",
    "EditDataset",
    "EditFormat",
    "EditRecord",
    "FormatRegistry",
    "get_format",
    "known_formats",
    "load_edit_records",
    "register_format",
    "write_edit_records",
]
