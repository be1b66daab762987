"""Feedback over the API: POST /feedback (one or a batch), GET /feedback (pages), the CSV export."""

from __future__ import annotations

import csv
import io

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from core.db import Feedback, session_scope
from service.api.feedback import MAX_BATCH
from tests.service.item_reference import brute_force_item
from tests.service.support import Catalog


def mark(query: str, result: str, judgement: str = "dissimilar", source: str = "merchandiser",
         **extra: object) -> dict:
    return {"query": query, "result": result, "judgement": judgement, "source": source, **extra}


def stored(catalog: Catalog) -> int:
    with session_scope(catalog.sessions) as s:
        return s.scalar(select(func.count()).select_from(Feedback)) or 0


def test_one_judgement_is_stored_and_sending_it_again_updates_it(client: FlaskClient, auth: dict,
                                                                 catalog: Catalog) -> None:
    first = client.post("/api/v1/feedback", json=mark("sku-001", "sku-002"), headers=auth)
    assert first.status_code == 200, first.json
    (row,) = first.json["judgements"]
    assert {k: row[k] for k in ("query", "result", "judgement", "y", "source", "weight")} == {
        "query": "sku-001", "result": "sku-002", "judgement": "dissimilar", "y": 1, "source": "merchandiser",
        "weight": 1.0}
    again = client.post("/api/v1/feedback", json=mark("sku-001", "sku-002", "similar", weight=0.5), headers=auth)
    assert again.status_code == 200, again.json
    (updated,) = again.json["judgements"]
    assert (updated["id"], updated["created_at"]) == (row["id"], row["created_at"])
    assert (updated["judgement"], updated["y"], updated["weight"]) == ("similar", 0, 0.5)
    assert stored(catalog) == 1


def test_a_batch_is_stored_in_order(client: FlaskClient, auth: dict, catalog: Catalog) -> None:
    batch = [mark("sku-001", "sku-002"), mark("sku-001", "sku-002", "similar", "click"),
             mark("sku-003", "sku-001", "similar", "skip", weight=2)]
    response = client.post("/api/v1/feedback", json={"judgements": batch}, headers=auth)
    assert response.status_code == 200, response.json
    assert response.json["count"] == 3
    assert [(r["query"], r["result"], r["source"], r["weight"]) for r in response.json["judgements"]] == [
        ("sku-001", "sku-002", "merchandiser", 1.0), ("sku-001", "sku-002", "click", 1.0),
        ("sku-003", "sku-001", "skip", 2.0)]
    assert stored(catalog) == 3


def test_writing_needs_a_key(client: FlaskClient, catalog: Catalog) -> None:
    response = client.post("/api/v1/feedback", json=mark("sku-001", "sku-002"))
    assert response.status_code == 401
    assert stored(catalog) == 0


@pytest.mark.parametrize("body, status, says", [
    ({"judgements": [mark("sku-001", "sku-002"), mark("sku-001", "nope")]}, 404, "'nope'"),
    ({"judgements": [mark("sku-001", "sku-002"), mark("sku-004", "sku-004")]}, 400, "same item 'sku-004'"),
    ({"judgements": [mark("sku-001", "sku-002"), mark("sku-001", "sku-003", "meh")]}, 400,
     "judgements[1].judgement: unknown value 'meh'"),
    ({"judgements": [mark("sku-001", "sku-002"), mark("sku-001", "sku-003", source="bot")]}, 400,
     "judgements[1].source: unknown value 'bot'"),
    ({"judgements": [mark("sku-001", "sku-002"), mark("sku-001", "sku-003", colour="red")]}, 400,
     "unknown field judgements[1].'colour'"),
    ({"judgements": [mark("sku-001", "sku-002"), mark("sku-001", "sku-003", weight=0)]}, 400,
     "judgements[1].weight: must be a finite number > 0"),
    (mark("sku-001", "sku-003", weight=-1.5), 400, "weight: must be a finite number > 0"),
    (mark("sku-001", "sku-003", weight=True), 400, "weight: must be a finite number > 0"),
    ({"query": "sku-001", "result": "sku-002", "judgement": "similar"}, 400, "source: is required"),
    ({"judgements": []}, 400, "judgements: must be a non-empty list"),
    ({"judgements": [mark("sku-001", "sku-002")], "extra": 1}, 400, "unknown field 'extra'"),
    ({"judgements": [mark("sku-001", "sku-002")] * (MAX_BATCH + 1)}, 400,
     f"judgements: at most {MAX_BATCH} per request"),
])
def test_a_bad_request_says_what_is_wrong_and_stores_nothing(client: FlaskClient, auth: dict, catalog: Catalog,
                                                             body: dict, status: int, says: str) -> None:
    response = client.post("/api/v1/feedback", json=body, headers=auth)
    assert response.status_code == status, response.json
    assert says in response.json["error"]["message"]
    if status == 404:
        assert response.json["error"]["details"] == {"external_id": "nope"}
    assert stored(catalog) == 0


def test_a_deleted_item_takes_no_feedback(client: FlaskClient, auth: dict, catalog: Catalog) -> None:
    assert client.delete("/api/v1/items/sku-005", headers=auth).status_code == 204
    response = client.post("/api/v1/feedback", json=mark("sku-001", "sku-005"), headers=auth)
    assert response.status_code == 404
    assert response.json["error"]["details"] == {"external_id": "sku-005"}


def test_list_filters_and_pages(client: FlaskClient, auth: dict) -> None:
    batch = [mark("sku-001", f"sku-{i:03d}", "dissimilar" if i % 2 else "similar") for i in range(2, 9)]
    batch.append(mark("sku-002", "sku-001", source="click"))
    assert client.post("/api/v1/feedback", json={"judgements": batch}, headers=auth).status_code == 200
    seen, cursor, pages = [], None, 0
    while True:
        params = {"query": "sku-001", "limit": 3, **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/v1/feedback", query_string=params).json
        seen += [r["result"] for r in body["judgements"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == ([f"sku-{i:03d}" for i in range(2, 9)], 3)
    body = client.get("/api/v1/feedback", query_string={"judgement": "dissimilar", "source": "merchandiser"}).json
    assert [r["result"] for r in body["judgements"]] == ["sku-003", "sku-005", "sku-007"]
    assert [r["query"] for r in client.get("/api/v1/feedback?source=click").json["judgements"]] == ["sku-002"]
    assert client.get("/api/v1/feedback?query=a%00b").json["judgements"] == []
    bad = client.get("/api/v1/feedback?source=bot")
    assert bad.status_code == 400 and "source: unknown value 'bot'" in bad.json["error"]["message"]


def test_export_is_a_pairs_csv(client: FlaskClient, auth: dict) -> None:
    batch = [mark("sku-001", "sku-002"), mark("sku-001", "sku-003", "similar", weight=2),
             mark("sku-004", "sku-001", source="skip")]
    assert client.post("/api/v1/feedback", json={"judgements": batch}, headers=auth).status_code == 200
    response = client.get("/api/v1/feedback/export", query_string={"query": "sku-001"})
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [(r["a"], r["b"], r["y"], r["source"], r["weight"]) for r in rows] == [
        ("sku-001", "sku-002", "1", "merchandiser", "1.0"), ("sku-001", "sku-003", "0", "merchandiser", "2.0")]
    everything = client.get("/api/v1/feedback/export").get_data(as_text=True).splitlines()
    assert len(everything) == 4 and everything[0] == "a,b,y,judgement,source,weight,id,created_at,updated_at"


def similar_ids(client: FlaskClient, external_id: str, k: int = 8, **params: object) -> list[str]:
    response = client.get(f"/api/v1/items/{external_id}/similar", query_string={"k": k, **params})
    assert response.status_code == 200, response.json
    return [r["external_id"] for r in response.json["results"]]


def test_a_merchandiser_dissimilar_mark_filters_the_next_query(client: FlaskClient, auth: dict,
                                                               catalog: Catalog) -> None:
    before = similar_ids(client, "sku-011")
    assert before == [e for e, _, _ in brute_force_item(catalog, "sku-011", k=8)]
    marked = [before[0], before[3]]
    batch = [mark("sku-011", ext) for ext in marked] + [mark("sku-012", before[1])]  # another query's mark
    assert client.post("/api/v1/feedback", json={"judgements": batch}, headers=auth).status_code == 200
    after = similar_ids(client, "sku-011")
    assert after == [e for e, _, _ in brute_force_item(catalog, "sku-011", k=8, exclude=marked)]
    assert len(after) == 8 and not set(marked) & set(after)
    # with a filter too, and the other direction (result -> query) is not marked
    shoes = similar_ids(client, "sku-011", category="shoes")
    assert not set(marked) & set(shoes) and len(shoes) == 8
    assert "sku-011" in similar_ids(client, marked[0], k=50)


@pytest.mark.parametrize("judgement, source", [("dissimilar", "click"), ("dissimilar", "skip"),
                                               ("similar", "merchandiser")])
def test_other_marks_do_not_filter(client: FlaskClient, auth: dict, judgement: str, source: str) -> None:
    before = similar_ids(client, "sku-011")
    batch = [mark("sku-011", ext, judgement, source) for ext in before[:3]]
    assert client.post("/api/v1/feedback", json={"judgements": batch}, headers=auth).status_code == 200
    assert similar_ids(client, "sku-011") == before


def test_marking_similar_again_lifts_the_filter(client: FlaskClient, auth: dict) -> None:
    before = similar_ids(client, "sku-011")
    assert client.post("/api/v1/feedback", json=mark("sku-011", before[0]), headers=auth).status_code == 200
    assert before[0] not in similar_ids(client, "sku-011")
    assert client.post("/api/v1/feedback", json=mark("sku-011", before[0], "similar"),
                       headers=auth).status_code == 200
    assert similar_ids(client, "sku-011") == before
