"""Reading tidings' Prometheus metrics back, as a scraper would, with prometheus_client's
own parser of the text format."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_samples(text: str) -> Samples:
    """Every sample of a ``/metrics`` answer: ``(name, labels) -> value``."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly ``labels`` in /metrics; None if absent."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return metric_samples(response.text).get((name, frozenset(labels.items())))
