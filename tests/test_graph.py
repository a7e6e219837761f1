"""Dependency semantics as pure functions: gates, cycles, critical path, the DAG file format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swarmctl.dag import DagError, load_dag, parse_dag
from swarmctl.graph import (
    BrokenEdge,
    JobSpec,
    break_cycles,
    critical_path,
    find_cycle,
    gates_of,
    strongly_connected,
)


def specs(*items: JobSpec) -> dict[str, JobSpec]:
    return {s.cpv: s for s in items}


def test_gates_are_build_deps_plus_their_runtime_closure() -> None:
    graph = specs(
        JobSpec("app/x-1", build=["lib/a-1"], run=["lib/own-run-1"], post=["lib/own-post-1"]),
        JobSpec("lib/a-1", run=["lib/b-1"], post=["lib/p-1"]),
        JobSpec("lib/b-1", run=["lib/c-1"], build=["dev/tool-1"]),
        JobSpec("lib/c-1"), JobSpec("lib/p-1"), JobSpec("dev/tool-1"),
        JobSpec("lib/own-run-1"), JobSpec("lib/own-post-1"),
    )
    gates = gates_of(graph)
    assert gates["app/x-1"] == {"lib/a-1": "build", "lib/b-1": "run", "lib/c-1": "run", "lib/p-1": "post"}
    # b's own build dependency is needed to build b, not to install it.
    assert "dev/tool-1" not in gates["app/x-1"]
    assert gates["lib/a-1"] == {}  # run and post edges of a package never gate it


def test_strongest_path_wins_and_a_package_never_waits_for_itself() -> None:
    graph = specs(JobSpec("app/x-1", build=["lib/a-1", "lib/b-1"]),
                  JobSpec("lib/a-1", post=["lib/b-1"], run=["app/x-1"]), JobSpec("lib/b-1"))
    assert gates_of(graph)["app/x-1"] == {"lib/a-1": "build", "lib/b-1": "build"}


def test_build_cycle_is_broken_at_one_edge() -> None:
    gates = {"sys-libs/glibc-2": {"sys-devel/gcc-14": "build"}, "sys-devel/gcc-14": {"sys-libs/glibc-2": "build"}}
    broken = break_cycles(gates)
    assert len(broken) == 1 and broken[0].kind == "build"
    assert find_cycle(gates) is None
    assert sum(len(g) for g in gates.values()) == 1


def test_weaker_gate_is_dropped_before_a_build_gate() -> None:
    gates = {"a/x-1": {"a/y-1": "build"}, "a/y-1": {"a/z-1": "build"}, "a/z-1": {"a/x-1": "run"}}
    assert break_cycles(gates) == [BrokenEdge(job="a/z-1", gate="a/x-1", kind="run")]
    assert gates["a/x-1"] == {"a/y-1": "build"} and gates["a/y-1"] == {"a/z-1": "build"}


def test_post_gates_go_before_run_gates_and_nothing_else_is_touched() -> None:
    gates = {"a/x-1": {"a/y-1": "run", "a/free-1": "build"}, "a/y-1": {"a/x-1": "post"}, "a/free-1": {}}
    broken = break_cycles(gates)
    assert [(b.job, b.kind) for b in broken] == [("a/y-1", "post")]
    assert gates["a/x-1"] == {"a/y-1": "run", "a/free-1": "build"}


def test_large_tangled_component_is_made_acyclic_quickly() -> None:
    n = 300
    names = [f"cat/p{chr(97 + i // 26)}{chr(97 + i % 26)}-1" for i in range(n)]
    gates: dict[str, dict[str, str]] = {name: {} for name in names}
    for i, name in enumerate(names):
        for j in range(1, 30):
            gates[name][names[(i * 7 + j * 13) % n]] = "post" if j % 2 else "run"
        gates[name][names[(i + 1) % n]] = "build"
        gates[name].pop(name, None)
    broken = break_cycles(gates)
    assert find_cycle(gates) is None
    assert sum(b.kind == "build" for b in broken) == 1  # one build edge closes the ring
    assert strongly_connected(gates) == []


def test_critical_path_is_the_longest_remaining_chain() -> None:
    gates = {"a/one-1": {}, "a/two-1": {"a/one-1": "build"}, "a/three-1": {"a/two-1": "build"}, "a/side-1": {}}
    chain = critical_path(gates, {"a/one-1": 10, "a/two-1": 20, "a/three-1": 30, "a/side-1": 50})
    assert chain == {"a/one-1": 60, "a/two-1": 50, "a/three-1": 30, "a/side-1": 50}


DAG = {
    "nodes": [{"cpv": "sys-devel/gcc-4.7.3-r1", "seconds": 3000}, {"cpv": "sys-libs/glibc-2.19-r1", "seconds": None},
              {"cpv": "dev-lang/perl-5.18.2-r1", "seconds": 400}],
    "edges": [["sys-libs/glibc-2.19-r1", "sys-devel/gcc-4.7.3-r1", "build"],
              ["sys-devel/gcc-4.7.3-r1", "sys-libs/glibc-2.19-r1", "build"],
              ["sys-libs/glibc-2.19-r1", "dev-lang/perl-5.18.2-r1", "run"],
              ["sys-libs/glibc-2.19-r1", "dev-lang/perl-5.18.2-r1", "run"],
              ["app-misc/absent-1", "dev-lang/perl-5.18.2-r1", "post"]],
    "edges_removed_to_make_acyclic": [["sys-devel/gcc-4.7.3-r1", "sys-libs/glibc-2.19-r1", "build"]],
}


def test_dag_leaves_out_the_resolvers_cycle_edges_by_default() -> None:
    dag = parse_dag(DAG)
    by_cpv = {s.cpv: s for s in dag.specs}
    assert by_cpv["sys-devel/gcc-4.7.3-r1"].build == ["sys-libs/glibc-2.19-r1"]
    assert by_cpv["sys-libs/glibc-2.19-r1"].build == []
    assert by_cpv["dev-lang/perl-5.18.2-r1"].run == ["sys-libs/glibc-2.19-r1"]  # duplicate edge once
    assert dag.removed == [("sys-devel/gcc-4.7.3-r1", "sys-libs/glibc-2.19-r1", "build")]
    assert dag.dangling == [("app-misc/absent-1", "dev-lang/perl-5.18.2-r1", "post")]
    assert dag.seconds == {"sys-devel/gcc-4.7.3-r1": 3000.0, "sys-libs/glibc-2.19-r1": None,
                           "dev-lang/perl-5.18.2-r1": 400.0}
    assert all(s.estimate is None for s in dag.specs)  # estimates come from history only


def test_dag_can_keep_cycle_edges_for_the_queue_to_break() -> None:
    dag = parse_dag(DAG, keep_cycle_edges=True)
    assert {s.cpv: s for s in dag.specs}["sys-libs/glibc-2.19-r1"].build == ["sys-devel/gcc-4.7.3-r1"]
    assert dag.removed == []


@pytest.mark.parametrize(("document", "message"), [
    ([], "expected an object"),
    ({"nodes": [{"cpv": "not a cpv"}], "edges": []}, "not a valid Gentoo package"),
    ({"nodes": [], "edges": [["a/b-1", "c/d-1", "test"]]}, "unknown edge kind"),
    ({"nodes": [], "edges": [["a/b-1"]]}, "an edge must be"),
])
def test_dag_format_errors_are_clear(document: object, message: str) -> None:
    with pytest.raises(DagError, match=message):
        parse_dag(document)


def test_load_dag_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(DagError, match="not JSON"):
        load_dag(bad)
    with pytest.raises(DagError, match="cannot read"):
        load_dag(tmp_path / "missing.json")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(DAG))
    assert len(load_dag(good).specs) == 3
