"""OIP datatype -> numpy dtype: the one table the codecs and the model's checks share.

Its own module, with nothing but numpy, so that the loader thread can import the model
(which checks requests against it) without the codec and asyncio: those the main thread
imports while onnxruntime builds the session (serve.py).
"""

from __future__ import annotations

import numpy as np

# Little-endian: the binary extension's byte order.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
