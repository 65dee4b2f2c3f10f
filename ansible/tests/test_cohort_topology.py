# -*- coding: utf-8 -*-
# Copyright: the cohort authors. MIT OR Apache-2.0.
"""Unit tests of the cohort_topology module's YAML reader, writer and edits.

Run by tests/ansible_playbook.rs with the venv's Python (the module imports
ansible.module_utils): python -m unittest discover -s ansible/tests
"""

import importlib.util
import os
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SPEC = importlib.util.spec_from_file_location(
    "cohort_topology", os.path.join(HERE, "..", "roles", "cohort", "library", "cohort_topology.py"))
M = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(M)

EXAMPLE = {
    "cluster": "orders",
    "failover": {"mode": "raft", "election_timeout": "1s"},
    "replicasets": {
        "storage-1": {
            "roles": ["storage", "http"],
            "failover_priority": ["s1-a", "s1-b"],
            "nodes": {
                "s1-a": {"address": "10.0.0.11:3301", "election": "candidate"},
                "s1-b": {"address": "10.0.0.12:3301", "election": "candidate"},
                "s1-c": {"address": "10.0.0.13:3301", "election": "voter"},
            },
        },
        "router-1": {"roles": ["router", "http"], "nodes": {"r1": {"address": "10.0.0.21:3301"}}},
    },
    "expelled": ["old-node"],
    "roles": {
        "http": {"listen": {"s1-a": 8080, "s1-b": 8081, "r1": 8082, "s1-c": None}},
        "billing": {"exec": "/usr/lib/billing/cohort-role", "depends": ["storage"]},
    },
}


class Reader(unittest.TestCase):
    def test_the_packaged_example(self):
        with open(os.path.join(REPO, "packaging", "topology.example.yaml")) as f:
            self.assertEqual(M.parse_yaml(f.read()), EXAMPLE)

    def test_block_and_flow_styles(self):
        text = """\
# a comment
cluster: 'it''s'   # trailing comment
list:
- a
- "b #not a comment"
- - x
  - y
- k: v
  k2: [1, 0x1F, 1.5, ~, true, "true"]
-
  deep: {a: {b: [c, d]}}
multi: [
  one,   # comment inside
  two,
]
url: http://x:80/a#b
"""
        self.assertEqual(M.parse_yaml(text), {
            "cluster": "it's",
            "list": ["a", "b #not a comment", ["x", "y"],
                     {"k": "v", "k2": [1, 31, 1.5, None, True, "true"]},
                     {"deep": {"a": {"b": ["c", "d"]}}}],
            "multi": ["one", "two"],
            "url": "http://x:80/a#b",
        })

    def test_what_it_refuses(self):
        for text, line in [
            ("a: &x 1", 1), ("a: *x", 1), ("a: !!str 1", 1), ("a: |\n  x", 1), ("a: >\n  x", 1),
            ("a: [1, 2", 1), ("a: 1\na: 2", 2), ("a:\n\tb: 1", 2), ("a: 1\n  b: 2", 2),
            ("- a\nb: 1", 2), ("a: 1\n---\nb: 2", 2), ("a: 'open", 1),
        ]:
            with self.assertRaises(M.YamlError, msg=text) as caught:
                M.parse_yaml(text)
            self.assertEqual(caught.exception.line, line, text)


class Writer(unittest.TestCase):
    def test_round_trip(self):
        text = M.dump_yaml(EXAMPLE)
        self.assertEqual(M.parse_yaml(text), EXAMPLE)
        self.assertIn("      s1-a: { address: 10.0.0.11:3301, election: candidate }\n", text)
        self.assertIn("    roles: [storage, http]\n", text)

    def test_strings_that_would_read_otherwise_are_quoted(self):
        for value in ["8080", "true", "null", "", "a: b", "[::1]:3301", "x #y", "-x", "yes it is", "1e3"]:
            text = M.scalar_text(value)
            self.assertEqual(M.parse_yaml("k: " + text), {"k": value}, text)
        self.assertEqual(M.scalar_text("s1-a"), "s1-a")
        self.assertEqual(M.scalar_text("10.0.0.1:3301"), "10.0.0.1:3301")
        self.assertEqual(M.scalar_text(None), "null")


class Edits(unittest.TestCase):
    def test_add_a_node_and_move_a_role(self):
        out = M.edit(EXAMPLE, {"r2": {"replicaset": "router-1", "address": "10.0.0.22:3301"}}, None,
                     {"storage-1": {"roles": ["storage"]}}, None)
        self.assertEqual(out["replicasets"]["router-1"]["nodes"]["r2"], {"address": "10.0.0.22:3301"})
        self.assertEqual(out["replicasets"]["storage-1"]["roles"], ["storage"])
        self.assertEqual(EXAMPLE["replicasets"]["storage-1"]["roles"], ["storage", "http"], "base kept")

    def test_move_a_node_keeps_its_address(self):
        out = M.edit(EXAMPLE, {"s1-c": {"replicaset": "router-1"}}, None, None, None)
        self.assertNotIn("s1-c", out["replicasets"]["storage-1"]["nodes"])
        self.assertEqual(out["replicasets"]["router-1"]["nodes"]["s1-c"],
                         {"address": "10.0.0.13:3301", "election": "voter"})

    def test_expel_takes_the_node_out_everywhere(self):
        out = M.edit(EXAMPLE, None, ["s1-b"], None, None)
        self.assertNotIn("s1-b", out["replicasets"]["storage-1"]["nodes"])
        self.assertEqual(out["replicasets"]["storage-1"]["failover_priority"], ["s1-a"])
        self.assertNotIn("s1-b", out["roles"]["http"]["listen"])
        self.assertEqual(out["expelled"], ["old-node", "s1-b"])

    def test_a_node_brought_back_leaves_the_expelled_list(self):
        out = M.edit(EXAMPLE, {"old-node": {"replicaset": "router-1", "address": "10.0.0.30:3301"}}, None, None, None)
        self.assertNotIn("expelled", out)

    def test_role_settings_are_set_and_removed(self):
        out = M.edit(EXAMPLE, None, None, None, {"billing": None, "http": {"listen": {"r1": 9000}}})
        self.assertEqual(out["roles"], {"http": {"listen": {"r1": 9000}}})

    def test_the_same_edits_change_nothing(self):
        self.assertEqual(M.edit(EXAMPLE, {"r1": {"replicaset": "router-1"}}, None, None, None), EXAMPLE)

    def test_a_new_node_needs_a_replica_set_and_an_address(self):
        with self.assertRaises(ValueError):
            M.edit(EXAMPLE, {"x": {"address": "10.0.0.9:3301"}}, None, None, None)
        with self.assertRaises(ValueError):
            M.edit(EXAMPLE, {"x": {"replicaset": "router-1"}}, None, None, None)


class Messages(unittest.TestCase):
    def test_problems_name_the_source_and_show_the_line(self):
        problem = M.relabel("/tmp/x/topology.yaml:2:9: unknown role `htp`", "/tmp/x/topology.yaml", "t.yaml")
        self.assertEqual(problem, "t.yaml:2:9: unknown role `htp`")
        self.assertEqual(M.with_source([problem], "a: 1\nroles: [htp]\n"),
                         [problem, "       2 | roles: [htp]"])


if __name__ == "__main__":
    unittest.main()
