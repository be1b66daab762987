"""JSON shapes of items, images and search results (the OpenAPI schemas mirror these)."""

from __future__ import annotations

from typing import Any

from core.db import ImageStatus, Item
from service.searcher import Match, SearchResult

MEDIA_PREFIX = "/api/v1/media/"


def media_url(media_key: str) -> str:
    return MEDIA_PREFIX + media_key


def item_json(item: Item) -> dict[str, Any]:
    images = [img for img in item.images if img.status is ImageStatus.ACTIVE]
    return {
        "external_id": item.external_id,
        "title": item.title,
        "category": item.category,
        "group": item.group_key,
        "attributes": item.attributes or {},
        "status": item.status.value,
        "images": [
            {"id": img.id, "url": media_url(img.media_key), "width": img.width, "height": img.height,
             "position": img.position}
            for img in sorted(images, key=lambda i: (i.position, i.id))
        ],
        "created_at": item.created_at.isoformat(),
        "updated_at": item.updated_at.isoformat(),
    }


def match_json(match: Match) -> dict[str, Any]:
    m = match.meta
    return {
        "external_id": m.external_id,
        "title": m.title,
        "category": m.category,
        "group": m.group_key,
        "attributes": m.attributes,
        "score": round(match.score, 6),
        "distance": round(match.distance, 6),
        "image_id": m.image_id,
        "image_url": media_url(m.media_key),
    }


def results_json(result: SearchResult, *, k: int, query: dict[str, Any], took_ms: float) -> dict[str, Any]:
    return {
        "query": query,
        "k": k,
        "count": len(result.matches),
        "results": [match_json(m) for m in result.matches],
        "model_version": result.model_version,
        "index_version": result.index_version,
        "took_ms": round(took_ms, 3),
    }
