"""Prompts: the text a model expects before a query or a document, chosen by `input_type`.

As sentence-transformers applies them (`SentenceTransformer.encode`, v5): a plain prefix, no
separator added (the space in e5's "query: " is part of the prompt), the whole text then
stripped of surrounding whitespace and, for `do_lower_case` models, lower-cased. A request's
`input_type` picks the prompt of that name; `document` falls back to `passage` and `corpus`,
the names some models use for it. With no `input_type`, the model's (or the route's) default
prompt applies, if it has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tokenizers

# What a request's input_type may be called among a model's prompts, in the order looked for.
PROMPT_NAMES: dict[str, tuple[str, ...]] = {
    "query": ("query",),
    "document": ("document", "passage", "corpus"),
}


def prompt_for(prompts: Mapping[str, str], default: str | None, input_type: str | None) -> str:
    """The prefix for inputs of this `input_type` ("" for none)."""
    if input_type is None:
        return prompts.get(default, "") if default is not None else ""
    # sentence-transformers always has "document" (empty unless set), so its encode_document
    # never reaches "passage"; a model that names only "passage" means it for documents.
    for name in PROMPT_NAMES.get(input_type, (input_type,)):
        if prompts.get(name):
            return prompts[name]
    return ""


def prepare(texts: list[str], prompt: str, lowercase: bool) -> list[str]:
    """The strings the tokenizer sees."""
    prepared = [(prompt + text).strip() for text in texts]
    return [text.lower() for text in prepared] if lowercase else prepared


def prompt_length(tokenizer: tokenizers.Tokenizer, prompt: str, lowercase: bool) -> int:
    """How many leading tokens of each input are the prompt, for `include_prompt: false`.

    sentence-transformers' `_get_prompt_length`: the prompt tokenised alone (stripped, special
    tokens added), less a trailing special token ([SEP], </s>): the leading [CLS] is counted,
    so it is left out of pooling too.
    """
    (text,) = prepare([""], prompt, lowercase)
    encoding = tokenizer.encode(text, add_special_tokens=True)
    count = len(encoding.ids)
    if count and encoding.special_tokens_mask[-1] == 1:
        count -= 1
    return count
