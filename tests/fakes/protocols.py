"""The wire protocols the fakes speak: a new provider shape is one module plus a line here."""

from __future__ import annotations

from tests.fakes.azure import AzureWire
from tests.fakes.cohere import CohereWire
from tests.fakes.gemini import GeminiWire
from tests.fakes.nugen import NugenWire
from tests.fakes.openai import OpenAIWire
from tests.fakes.voyage import VoyageWire
from tests.fakes.wire import WireProtocol

WIRE_PROTOCOLS: dict[str, WireProtocol] = {
    wire.name: wire
    for wire in (OpenAIWire(), NugenWire(), AzureWire(), CohereWire(), VoyageWire(), GeminiWire())
}

PROTOCOLS: tuple[str, ...] = tuple(WIRE_PROTOCOLS)


def wire_protocol(name: str) -> WireProtocol:
    try:
        return WIRE_PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; expected one of {PROTOCOLS}") from None
