import json

from whodid.tracer import Store, ingest

from kit import Host

H = Host("web-01", "10.0.0.1")


def test_a_bad_event_is_refused_and_the_rest_of_the_batch_kept():
    store = Store.open(":memory:", create=True)
    good1, good2 = H.fork(1, 10, 1), H.exec(2, 10, ["ls"])
    bad = H.exec(3, 11, ["ls"])
    del bad["uid"]
    report = ingest(store, [good1, bad, good2, "not json", {"v": 9}])
    assert (report.received, report.accepted, report.rejected) == (5, 2, 3)
    assert [(s.position, s.field) for s in report.samples] == [(2, "uid"), (4, "json"), (5, "v")]
    assert "2 of 5 events accepted" in report.summary()
    assert "event 2: uid: required for kind 'exec' but missing" in report.summary()
    assert store.counts()["execs"] == 1


def test_json_lines_with_blank_lines_and_batches_smaller_than_input():
    store = Store.open(":memory:", create=True)
    lines = [json.dumps(H.exec(i, 100 + i, ["echo", str(i)])) + "\n" for i in range(25)]
    lines.insert(3, "\n")
    seen = []
    report = ingest(store, lines, batch=10, progress=lambda r: seen.append(r.accepted))
    assert report.accepted == 25 and report.rejected == 0
    assert seen == [10, 20, 25]
    assert store.counts()["execs"] == 25
