"""The base's references of a stream, kept in its folder so a resume does not measure them again.

Every round is compared with what the base model answers (teacher-forced locality predictions,
generated locality answers, general task scores). On a real model measuring them is minutes of
generation and lm-eval; a killed stream resumed from its folder reads them back instead. They
belong to the records, tokenizer and prompt format by their signatures, which the evaluators
check on use; the config they were measured with is the stream's, which a resume checks first.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file

from mm4ke_ray.atomic_write import write_text_atomic
from mm4ke_ray.evaluate.edit_metrics import LocalityReference
from mm4ke_ray.evaluate.general import GeneralResult
from mm4ke_ray.evaluate.generation import GenerationReference
from mm4ke_ray.evaluate.rung_views import Reference

REFERENCE_JSON = "base_reference.json"
REFERENCE_TENSORS = "base_reference.safetensors"


def save_reference(folder: str | Path, reference: Reference) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"general": reference.general,
           "general_result": asdict(reference.general_result) if reference.general_result else None,
           "generation": {"answers": list(reference.generation.answers), "signature": reference.generation.signature}
           if reference.generation else None,
           "locality_signature": reference.locality.signature if reference.locality else None}
    if reference.locality is not None:
        save_file({"predictions": reference.locality.predictions.contiguous()}, str(folder / REFERENCE_TENSORS))
    write_text_atomic(folder / REFERENCE_JSON, json.dumps(doc) + "\n")  # last: its presence means the tensors are whole


def load_reference(folder: str | Path) -> Reference | None:
    """The references `save_reference` kept in `folder`; None where there are none."""
    folder = Path(folder)
    if not (folder / REFERENCE_JSON).is_file():
        return None
    doc = json.loads((folder / REFERENCE_JSON).read_text())
    locality = None
    if doc["locality_signature"] is not None:
        predictions = load_file(str(folder / REFERENCE_TENSORS))["predictions"]
        locality = LocalityReference(predictions, doc["locality_signature"])
    generation = doc["generation"] and GenerationReference(tuple(doc["generation"]["answers"]),
                                                           doc["generation"]["signature"])
    result = doc["general_result"] and GeneralResult(**doc["general_result"])
    return Reference(locality=locality, general=doc["general"], metrics={}, general_result=result,
                     generation=generation)
