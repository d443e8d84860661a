"""Our topological sort against networkx's lexicographical one (an independent implementation)."""

from __future__ import annotations

import random

import networkx as nx
import pytest
from onnx import helper

from qdebug.errors import ModelError
from qdebug.graph.model import ModelGraph


def _random_dag_nodes(n: int, seed: int) -> list:
    rng = random.Random(seed)
    nodes = []
    for k in range(n):
        ins = [f"t{j}" for j in rng.sample(range(k), min(k, rng.randint(0, 3)))] if k else ["x"]
        nodes.append(helper.make_node("Sum", ins or ["x"], [f"t{k}"], name=f"n{k}"))
    rng.shuffle(nodes)  # file order is not a valid order any more
    return nodes


@pytest.mark.parametrize("seed", range(8))
def test_toposort_matches_networkx(seed: int) -> None:
    nodes = _random_dag_nodes(60, seed)
    ours = [n.name for n in ModelGraph._toposort(nodes)]
    dg = nx.DiGraph()
    dg.add_nodes_from(range(len(nodes)))
    produced = {n.output[0]: k for k, n in enumerate(nodes)}
    for k, n in enumerate(nodes):
        for i in n.input:
            if i in produced:
                dg.add_edge(produced[i], k)
    ref = [nodes[k].name for k in nx.lexicographical_topological_sort(dg)]
    assert ours == ref
    pos = {name: i for i, name in enumerate(ours)}
    for n in nodes:  # and it is a valid order
        for i in n.input:
            if i != "x":
                assert pos["n" + i[1:]] < pos[n.name]


def test_toposort_cycle_is_a_model_error() -> None:
    nodes = [helper.make_node("Relu", ["b"], ["a"], name="A"), helper.make_node("Relu", ["a"], ["b"], name="B")]
    with pytest.raises(ModelError, match="cycle"):
        ModelGraph._toposort(nodes)
