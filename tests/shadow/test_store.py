"""SQLite persistence of shadows and things, and the service over it (no network)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from iotbridge_local.shadow.service import ShadowService
from iotbridge_local.shadow.store import ShadowStore


def make(tmp_path: Path) -> tuple[ShadowStore, ShadowService, list[tuple[str, dict]]]:
    store = ShadowStore(tmp_path / "shadows.db")
    published: list[tuple[str, dict]] = []
    return store, ShadowService(store, lambda t, p: published.append((t, json.loads(p)))), published


def test_shadows_survive_reopening_and_versions_grow_across_delete(tmp_path: Path) -> None:
    # GIVEN a classic and a named shadow written, then the classic one deleted
    store, svc, _ = make(tmp_path)
    for i in range(3):
        svc.handle("dev1", None, "update", json.dumps({"state": {"reported": {"i": i}}}).encode(), via_mqtt=False)
    svc.handle("dev1", "commands", "update", b'{"state":{"desired":{"c1":{"action":"ping"}}}}', via_mqtt=False)
    assert svc.handle("dev1", None, "delete", b"", via_mqtt=False).body["version"] == 3
    store.close()
    # WHEN the store is reopened
    store2, svc2, _ = make(tmp_path)
    # THEN the named shadow is intact, the classic one is gone, and recreating it continues at version 4
    got = svc2.handle("dev1", "commands", "get", b"", via_mqtt=False)
    assert got.status == 200 and got.body["state"]["delta"] == {"c1": {"action": "ping"}}
    assert svc2.handle("dev1", None, "get", b"", via_mqtt=False).status == 404
    again = svc2.handle("dev1", None, "update", b'{"state":{"reported":{"i":9}}}', via_mqtt=False)
    assert again.body["version"] == 4
    store2.close()


def test_named_shadow_listing_pages_and_skips_deleted_ones(tmp_path: Path) -> None:
    # GIVEN five named shadows and a classic one, one named shadow deleted
    store, svc, _ = make(tmp_path)
    svc.handle("dev1", None, "update", b'{"state":{}}', via_mqtt=False)
    for name in ("a", "b", "c", "d", "e"):
        svc.handle("dev1", name, "update", b'{"state":{}}', via_mqtt=False)
    svc.handle("dev1", "c", "delete", b"", via_mqtt=False)
    # WHEN listed two at a time
    first = svc.list_named_shadows("dev1", 2, None)
    second = svc.list_named_shadows("dev1", 2, first["nextToken"])
    # THEN every live named shadow appears once, the classic one never, and the last page has no token
    assert first["results"] + second["results"] == ["a", "b", "d", "e"]
    assert "nextToken" not in second
    store.close()


def test_http_updates_publish_accepted_documents_delta_but_errors_publish_nothing(tmp_path: Path) -> None:
    # GIVEN the service
    store, svc, published = make(tmp_path)
    # WHEN an HTTP update sets desired state
    svc.handle("dev1", None, "update", b'{"state":{"desired":{"led":"on"}}}', via_mqtt=False)
    # THEN accepted, documents and delta are published for devices
    assert [t for t, _ in published] == [
        "$aws/things/dev1/shadow/update/accepted",
        "$aws/things/dev1/shadow/update/documents",
        "$aws/things/dev1/shadow/update/delta",
    ]
    published.clear()
    # WHEN an HTTP update is rejected / THEN nothing is published (AWS: REST errors emit no MQTT)
    out = svc.handle("dev1", None, "update", b'{"state":{"desired":{"led":"off"}},"version":7}', via_mqtt=False)
    assert out.status == 409 and published == []
    # WHEN the same request arrives over MQTT / THEN it is published on update/rejected
    svc.handle_mqtt("$aws/things/dev1/shadow/update", b'{"state":{"desired":{"led":"off"}},"version":7}')
    assert published[0][0] == "$aws/things/dev1/shadow/update/rejected"
    assert published[0][1]["code"] == 409
    store.close()


def test_more_than_ten_requests_in_flight_for_one_thing_get_429(tmp_path: Path) -> None:
    # GIVEN a publisher that blocks, so requests stay in flight
    store = ShadowStore(tmp_path / "s.db")
    release = threading.Event()

    def slow_publish(topic: str, payload: bytes) -> None:
        release.wait(5)

    svc = ShadowService(store, slow_publish)
    results: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(svc.handle("busy", None, "update", b'{"state":{}}', via_mqtt=False).status)
        )
        for _ in range(10)
    ]
    for t in threads:
        t.start()
    while sum(svc._in_flight.values()) < 10:
        threading.Event().wait(0.01)
    # WHEN an 11th request arrives for the same thing, and one for another thing
    eleventh = svc.handle("busy", None, "get", b"", via_mqtt=False)
    # THEN the 11th is a 429
    assert eleventh.status == 429
    release.set()
    for t in threads:
        t.join()
    # AND the ten in flight all succeeded
    assert results == [200] * 10
    store.close()


def test_thing_registry_create_is_idempotent_and_lists_in_pages(tmp_path: Path) -> None:
    # GIVEN three things
    store = ShadowStore(tmp_path / "s.db")
    first, created = store.create_thing("t1", {"model": "pi"})
    again, created_again = store.create_thing("t1", {"model": "pi"})
    store.create_thing("t2")
    store.create_thing("t3")
    # THEN creating twice returns the same thing, and listing pages by name
    assert created and not created_again and again.thing_id == first.thing_id
    assert [t.name for t in store.list_things(limit=2)] == ["t1", "t2"]
    assert [t.name for t in store.list_things(after="t2", limit=2)] == ["t3"]
    # WHEN one is deleted / THEN it is gone
    assert store.delete_thing("t2") and store.describe_thing("t2") is None
    store.close()


def test_a_thing_gets_twenty_shadow_requests_a_second_over_mqtt_and_http_together(tmp_path: Path) -> None:
    # GIVEN the shadow service with AWS's per-thing rate, on a clock the test moves
    store = ShadowStore(tmp_path / "s.db")
    published: list[tuple[str, dict]] = []
    clock = [100.0]
    svc = ShadowService(store, lambda t, p: published.append((t, json.loads(p))), max_rate=20, monotonic=lambda: clock[0])
    update = b'{"state":{"reported":{"n":1}},"clientToken":"t"}'
    # WHEN one thing makes 10 HTTP requests and 10 MQTT updates in the same instant, then one more of each
    statuses = [svc.handle("hot", None, "get" if i % 2 else "update", update, via_mqtt=False).status for i in range(10)]
    for _ in range(10):
        svc.handle_mqtt("$aws/things/hot/shadow/update", update)
    over_http = svc.handle("hot", None, "get", b"", via_mqtt=False)
    published.clear()
    svc.handle_mqtt("$aws/things/hot/shadow/update", update)
    # THEN the first twenty are served, the 21st over HTTP is 429, and the one over MQTT is rejected with 429
    assert statuses == [200] * 10
    assert over_http.status == 429 and over_http.body["message"].startswith("Too Many Requests")
    assert [(t, d["code"], d.get("clientToken")) for t, d in published] == [("$aws/things/hot/shadow/update/rejected", 429, "t")]
    # AND another thing is not held back by it
    assert svc.handle("cool", None, "get", b"", via_mqtt=False).status == 404
    # AND an eighth of a second later (2.5 requests' worth), two more are served and a third is not
    clock[0] += 0.125
    assert [svc.handle("hot", None, "get", b"", via_mqtt=False).status for _ in range(3)] == [200, 200, 429]
    # AND a throttled get over MQTT is rejected with its clientToken, as AWS does (the Pi agent drops
    #   get rejections that carry none of this connection's tokens)
    published.clear()
    svc.handle_mqtt("$aws/things/hot/shadow/get", b'{"clientToken":"g1"}')
    assert [(t, d["code"], d.get("clientToken")) for t, d in published] == [("$aws/things/hot/shadow/get/rejected", 429, "g1")]
    # AND a rate under one a second still serves a request now and then, not none ever
    slow = ShadowService(store, lambda t, p: None, max_rate=0.5, monotonic=lambda: clock[0])
    assert [slow.handle("calm", None, "get", b"", via_mqtt=False).status for _ in range(2)] == [404, 429]
    clock[0] += 2.0
    assert slow.handle("calm", None, "get", b"", via_mqtt=False).status == 404
    # AND without the limit (benchmarks of our own code) nothing is refused
    svc.max_rate = None
    assert {svc.handle("hot", None, "get", b"", via_mqtt=False).status for _ in range(50)} == {200}
    store.close()
