"""Paper 000's Kim CNN request as an OpenWhisk action on the Kindling image.

castorini's Lambda handler tokenized the sentence, fetched each word's vector from
DynamoDB and ran the CNN. Here the vectors come from the embedding store (Redis when
KINDLING_REDIS_URL is set, else the embedded file store) and the CNN from the data plane:

    {"sentence": "a gripping, funny film"}
        -> {"label": 3, "probabilities": [5 floats], "oov": ["words", "not", "in", "table"]}

Deploy it as a zip: this file as __main__.py beside the model folder kim_cnn_vectors/
(README, "OpenWhisk"). KIM_CNN_MODEL and KIM_CNN_TABLE (init-time environment) or the
"model" and "table" parameters choose another model or table.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from kindling.runtime.action import embeddings, models
from kindling.runtime.text import clean_str_sst

MODEL = os.environ.get("KIM_CNN_MODEL", "kim_cnn_vectors")
TABLE = os.environ.get("KIM_CNN_TABLE", "demo300")
MIN_WORDS = 5  # the widest filter: Kim's code pads every sentence to it
MAX_WORDS = 64  # SST's longest sentence has 56 tokens (Kim 2014, Table 1)


def main(args: dict[str, Any]) -> dict[str, Any]:
    words = clean_str_sst(str(args.get("sentence", "")))[:MAX_WORDS]
    if not words:
        return {"error": "'sentence' has no words"}
    found = embeddings.lookup(args.get("table", TABLE), words)
    vectors = np.zeros((1, max(len(words), MIN_WORDS), found.dim), np.float32)
    vectors[0, : len(words)] = found.vectors
    scores = models.infer(args.get("model", MODEL), {"embeddings": vectors})["probabilities"][0]
    return {
        "label": int(scores.argmax()),
        "probabilities": scores.tolist(),
        "oov": [words[i] for i in found.oov],
    }
