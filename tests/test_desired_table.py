"""DesiredTable: the desired set held as compact rows gives back the same resources, in order, for less memory."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import timedelta

from driftd.models.baseline import Enforcement
from driftd.models.resources import ContainerPayload, DesiredResource, HostPayload
from driftd.models.table import DesiredTable


def file_resource(i: int, **kw: object) -> DesiredResource:
    path = f"/etc/app/{i:05d}.conf"
    fields: dict[str, object] = {
        "key": f"host:file:{path}", "target": "host", "kind": "file", "address": path, "baseline": "app",
        "expected": {"content": f"sha256:{i:064x}", "mode": "0644"}, "content": b"x = %d\n" % i,
    }
    fields.update(kw)
    return DesiredResource.model_validate(fields)


def resources() -> list[DesiredResource]:
    return [
        file_resource(0),
        file_resource(1, sensitive=frozenset({"content"}), enforcement=Enforcement.WARN, window=timedelta(minutes=5),
                      grace=timedelta(seconds=30), payload=HostPayload(retire_on_failure=True)),
        DesiredResource(key="host:sysctl:net.ipv4.ip_forward", target="host", kind="sysctl", address="net.ipv4.ip_forward",
                        baseline="net", expected={"value": "0"}),
        DesiredResource(key="host:dir:/srv", target="host", kind="dir", address="/srv", baseline="app",
                        expected={"mode": "0755", "owner": 0, "present": True, "flag": 1}),
        DesiredResource(key="mem:web", target="mem", kind="container", address="web", baseline="c",
                        expected={"env": {"A": "1"}, "ports": [80, 443]},
                        payload=ContainerPayload(actions={"env": "recreate"}, approved=("sha256:abc",))),
    ]


def test_every_resource_comes_back_equal_in_order():
    rs = resources()
    table = DesiredTable(rs)
    assert list(table) == [r.key for r in rs]
    assert len(table) == len(rs) and "mem:web" in table and "host:file:/nope" not in table
    assert [table[r.key] for r in rs] == rs
    assert list(table.values()) == rs and [k for k, _ in table.items()] == [r.key for r in rs]
    assert table.get("host:file:/nope") is None
    for r in rs:
        got = table[r.key]
        assert got.model_fields_set == r.model_fields_set
        assert got.model_dump() == r.model_dump() and type(got.payload) is type(r.payload)
    assert table.baseline_of("host:sysctl:net.ipv4.ip_forward") == "net" and table.target_of("mem:web") == "mem"
    assert table.baseline_of("host:file:/nope") is None


def test_equal_values_are_shared_but_true_and_one_stay_apart():
    table = DesiredTable([file_resource(i) for i in range(3)] + resources()[3:4])
    a, b = table["host:file:/etc/app/00000.conf"], table["host:file:/etc/app/00002.conf"]
    assert a.expected["mode"] is b.expected["mode"] and a.payload is b.payload and a.window is b.window
    d = table["host:dir:/srv"].expected
    assert d["present"] is True and d["flag"] == 1 and type(d["flag"]) is int and d["owner"] == 0
    assert type(d["owner"]) is int


def test_a_built_resource_is_a_copy_the_reader_cannot_change_the_table_through():
    table = DesiredTable(resources())
    got = table["mem:web"]
    got.expected["env"] = {"B": "2"}  # a reader's dict is its own
    assert table["mem:web"].expected == {"env": {"A": "1"}, "ports": [80, 443]}


def test_ten_thousand_files_cost_a_third_of_the_models():
    gc.collect()
    tracemalloc.start()
    try:
        models = [file_resource(i) for i in range(2000)]
        as_models = tracemalloc.get_traced_memory()[0]
        table = DesiredTable(models)
        del models
        gc.collect()
        as_table = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(table) == 2000
    assert as_table * 3 < as_models, (as_table, as_models)
