#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: the cohort authors. MIT OR Apache-2.0.
"""Ansible module: the cohort topology, declared and applied (stdlib only)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cohort_topology
short_description: Declare the cohort topology and apply it to the whole cluster
description:
  - Computes the topology the cluster should run, compares it with the
    committed one (C(cohort topology)), validates it (C(cohort validate
    topology)) and applies it with C(cohort apply --wait), which commits it
    on every node or on none (two-phase commit).
  - The topology is either given whole (O(content), byte for byte: comments
    are kept) or derived from the committed one (or from O(content)) by
    declarative edits - nodes to add or move (O(nodes)), nodes to expel
    (O(expel)), roles and failover priority of replica sets
    (O(replicasets)), settings of roles (O(roles)). An edited topology is
    written out again by this module, so the comments of the text it starts
    from are not kept.
  - C(changed) is true only when a new version was committed (in check mode:
    when one would be). Nothing is written on the target but a temp file.
  - Runs on a node of the cluster and talks to its agent through the
    C(cohort) command. Needs only the Python standard library.
version_added: "0.1.0"
author: cohort authors
options:
  api:
    description:
      - The agent API to talk to over TCP (C(host:port)), as C(cohort --api); a write there needs C(token_file).
      - Without C(api) and C(socket), C(cohort) picks /run/cohort/api.sock when it exists, else 127.0.0.1:8300.
    type: str
  socket:
    description: The agent's unix socket, as C(cohort --socket) (C(/run/cohort/NAME/api.sock) for C(cohort@NAME)); wins over C(api).
    type: path
  token_file:
    description: A file holding the agent's API token, as C(cohort --token-file).
    type: path
  cohort_bin:
    description: The C(cohort) executable; looked up on C(PATH) when not given.
    type: path
  content:
    description:
      - The whole topology text. Without edits it is applied as it is.
      - With edits, the edits are made to it instead of the committed topology.
    type: str
  name:
    description: What problems in the text are named after (C(NAME:LINE:COLUMN)).
    type: str
    default: topology.yaml
  nodes:
    description:
      - Nodes that must be in the topology, by name. Each is put into
        C(replicaset) (created when missing, moved there when elsewhere) with
        C(address) and C(election); C(state=absent) removes it without
        expelling it. A node listed under C(expelled) is taken off that list.
    type: dict
  expel:
    description: Nodes to expel - removed from their replica set and listed under C(expelled).
    type: list
    elements: str
  replicasets:
    description:
      - Per replica set, the keys to set (C(roles), C(failover_priority)); a
        replica set missing here is created (it needs nodes to be valid).
        C(null) removes a replica set.
    type: dict
  roles:
    description:
      - Role settings under C(roles:) to set, by role name, each replaced as a
        whole (C(listen), C(exec), C(depends), C(timeout), C(config)); C(null)
        removes the role's settings.
    type: dict
  apply:
    description: Apply a changed topology. With C(false) the module only validates and shows the difference.
    type: bool
    default: true
  timeout:
    description: How long the apply may take to decide and to be acknowledged by every node (C(cohort apply --timeout)).
    type: str
    default: 60s
notes:
  - Supports check mode and diff mode - the diff is the committed text against
    the new one, followed by C(cohort topology diff) (nodes, roles, ports).
  - The YAML reader for edits is a small one of the standard library - block
    and flow collections, plain and quoted scalars, comments. Anchors, tags
    and block scalars are refused; pass such a topology whole with O(content).
"""

EXAMPLES = r"""
- name: Apply a topology rendered from a template
  cohort_topology:
    content: "{{ lookup('ansible.builtin.template', 'topology.yaml.j2') }}"
    name: topology.yaml.j2

- name: Add a node and give its replica set the http role
  cohort_topology:
    nodes:
      r2: {replicaset: router-1, address: "10.0.0.22:3301"}
    replicasets:
      router-1: {roles: [router, http]}
    roles:
      http: {listen: {s1-a: 8080, s1-b: 8081, r1: 8082, r2: 8082}}

- name: Expel a node
  cohort_topology:
    expel: [old-node]
"""

RETURN = r"""
outcome:
  description: committed, unchanged, or (check mode, apply=false) would-commit.
  returned: always
  type: str
version:
  description: The committed version after the module ran.
  returned: always
  type: int
previous_version:
  description: The committed version before (0 when none was).
  returned: always
  type: int
changes:
  description: What the new text changes, one line each (C(cohort topology diff)).
  returned: always
  type: list
  elements: str
text:
  description: The topology text the module applied, or would apply.
  returned: always
  type: str
result:
  description: The agent's answer to the apply (C(cohort apply --format json)).
  returned: when applied
  type: dict
"""

import json
import os
import re

from ansible.module_utils.basic import AnsibleModule


class YamlError(Exception):
    """A construct the small reader below does not handle, or bad YAML."""

    def __init__(self, line, message):
        Exception.__init__(self, "line %d: %s" % (line, message))
        self.line = line


# --- reading: the subset of YAML a topology is written in ------------------

_NULLS = ("", "~", "null", "Null", "NULL")
_TRUE = ("true", "True", "TRUE")
_FALSE = ("false", "False", "FALSE")
_INT = re.compile(r"^[-+]?[0-9]+$")
_OCT = re.compile(r"^0o[0-7]+$")
_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(inf|Inf|INF)$")
_NAN = re.compile(r"^\.(nan|NaN|NAN)$")


def resolve(plain):
    """A plain scalar as YAML 1.2's core schema reads it."""
    if plain in _NULLS:
        return None
    if plain in _TRUE:
        return True
    if plain in _FALSE:
        return False
    if _INT.match(plain):
        return int(plain, 10)
    if _OCT.match(plain):
        return int(plain[2:], 8)
    if _HEX.match(plain):
        return int(plain[2:], 16)
    if _FLOAT.match(plain) and any(c.isdigit() for c in plain):
        return float(plain)
    if _INF.match(plain):
        return float("-inf") if plain.startswith("-") else float("inf")
    if _NAN.match(plain):
        return float("nan")
    return plain


def strip_comment(text):
    """The text before a comment (`#` at the start or after a blank), quotes respected."""
    quote = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote == "'":
            if c == "'":
                if i + 1 < len(text) and text[i + 1] == "'":
                    i += 1
                else:
                    quote = None
        elif quote == '"':
            if c == "\\":
                i += 1
            elif c == '"':
                quote = None
        elif c in "'\"" and (i == 0 or text[i - 1] in " \t[{,:-"):
            quote = c
        elif c == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
        i += 1
    return text.rstrip()


_DQ_ESCAPES = {
    "0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v",
    "f": "\f", "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\",
    "N": "\x85", "_": "\xa0", "L": "\u2028", "P": "\u2029",
}


def read_quoted(text, pos, line):
    """A quoted scalar starting at text[pos]; returns (value, position after it)."""
    quote = text[pos]
    out = []
    i = pos + 1
    while i < len(text):
        c = text[i]
        if quote == "'":
            if c == "'":
                if i + 1 < len(text) and text[i + 1] == "'":
                    out.append("'")
                    i += 2
                    continue
                return "".join(out), i + 1
            out.append(c)
        else:
            if c == '"':
                return "".join(out), i + 1
            if c == "\\":
                i += 1
                if i >= len(text):
                    break
                e = text[i]
                if e in _DQ_ESCAPES:
                    out.append(_DQ_ESCAPES[e])
                elif e in "xuU":
                    width = {"x": 2, "u": 4, "U": 8}[e]
                    digits = text[i + 1:i + 1 + width]
                    if len(digits) != width:
                        raise YamlError(line, "bad escape \\%s%s" % (e, digits))
                    out.append(chr(int(digits, 16)))
                    i += width
                else:
                    raise YamlError(line, "unknown escape \\%s" % e)
            else:
                out.append(c)
        i += 1
    raise YamlError(line, "a quoted scalar that does not end on its line (write it on one line)")


class Flow(object):
    """A flow collection or scalar on one (joined) line."""

    def __init__(self, text, line):
        self.text = text
        self.pos = 0
        self.line = line

    def fail(self, message):
        raise YamlError(self.line, message)

    def ws(self):
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self):
        self.ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def value(self, in_flow):
        c = self.peek()
        if c == "{":
            return self.mapping()
        if c == "[":
            return self.sequence()
        if c in "'\"":
            value, self.pos = read_quoted(self.text, self.pos, self.line)
            return value
        if c in "&*!|>%@`":
            self.fail("`%s` (anchors, aliases, tags, block scalars) is not supported here" % c)
        return resolve(self.plain(in_flow))

    def plain(self, in_flow):
        start = self.pos
        t = self.text
        while self.pos < len(t):
            c = t[self.pos]
            nxt = t[self.pos + 1] if self.pos + 1 < len(t) else ""
            if in_flow and c in ",[]{}":
                break
            if c == ":" and (nxt in ("", " ", "\t") or (in_flow and nxt in ",[]{}")):
                break
            if c == "#" and self.pos > start and t[self.pos - 1] in " \t":
                break
            self.pos += 1
        return t[start:self.pos].strip()

    def key(self):
        c = self.peek()
        if c in "'\"":
            value, self.pos = read_quoted(self.text, self.pos, self.line)
            return value
        if c in "{[":
            self.fail("a collection as a mapping key is not supported")
        return resolve(self.plain(True))

    def mapping(self):
        self.pos += 1
        out = {}
        while True:
            c = self.peek()
            if c == "}":
                self.pos += 1
                return out
            if c == "":
                self.fail("a flow mapping `{` that is not closed")
            key = self.key()
            if isinstance(key, (dict, list)):
                self.fail("a collection as a mapping key is not supported")
            if key in out:
                self.fail("duplicate key `%s`" % key)
            c = self.peek()
            if c == ":":
                self.pos += 1
                c = self.peek()
                value = None if c in ",}" else self.value(True)
            else:
                value = None
            out[key] = value
            c = self.peek()
            if c == ",":
                self.pos += 1
            elif c != "}":
                self.fail("expected `,` or `}` in a flow mapping, found `%s`" % c)

    def sequence(self):
        self.pos += 1
        out = []
        while True:
            c = self.peek()
            if c == "]":
                self.pos += 1
                return out
            if c == "":
                self.fail("a flow sequence `[` that is not closed")
            out.append(self.value(True))
            c = self.peek()
            if c == ",":
                self.pos += 1
            elif c != "]":
                self.fail("expected `,` or `]` in a flow sequence, found `%s`" % c)

    def whole(self):
        value = self.value(False)
        if self.peek() != "":
            self.fail("unexpected text `%s`" % self.text[self.pos:])
        return value


def flow_depth(text):
    """How many flow brackets stay open at the end of text (quotes respected)."""
    depth = 0
    i = 0
    while i < len(text):
        c = text[i]
        if c in "'\"":
            try:
                _, i = read_quoted(text, i, 0)
            except YamlError:
                return depth
            continue
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return depth


class Line(object):
    def __init__(self, number, indent, text):
        self.number = number
        self.indent = indent
        self.text = text


def is_entry(text):
    """Whether a block line is `key: ...` (returns the split) or not (None)."""
    if text.startswith(("'", '"')):
        try:
            key, pos = read_quoted(text, 0, 0)
        except YamlError:
            return None
        rest = text[pos:]
        if rest == ":" or rest.startswith((": ", ":\t")):
            return key, rest[1:].strip()
        return None
    if text.startswith(("[", "{", "- ")) or text == "-":
        return None
    for m in re.finditer(":", text):
        i = m.start()
        if i + 1 == len(text) or text[i + 1] in " \t":
            key = text[:i].strip()
            if not key:
                return None
            return resolve(key), text[i + 1:].strip()
    return None


class Block(object):
    """A YAML document in block style (with flow collections inside)."""

    def __init__(self, text):
        self.lines = []
        pending = None
        for number, raw in enumerate(text.splitlines(), 1):
            if pending is not None:
                body = strip_comment(raw).strip()
                pending.text += " " + body
                if flow_depth(pending.text) <= 0:
                    self.lines.append(pending)
                    pending = None
                continue
            stripped = raw.lstrip(" ")
            if stripped.startswith("\t"):
                raise YamlError(number, "a tab in the indentation")
            body = strip_comment(stripped)
            if not body:
                continue
            if body.startswith("%") and raw.startswith("%"):
                raise YamlError(number, "directives are not supported")
            if body in ("---", "..."):
                if self.lines:
                    raise YamlError(number, "only one document is supported")
                continue
            if body.startswith("--- "):
                raise YamlError(number, "content after `---` is not supported")
            line = Line(number, len(raw) - len(stripped), body)
            if flow_depth(body) > 0:
                pending = line
            else:
                self.lines.append(line)
        if pending is not None:
            raise YamlError(pending.number, "a flow collection that is not closed")
        self.i = 0

    def parse(self):
        if not self.lines:
            return None
        value = self.node(self.lines[0].indent)
        if self.i < len(self.lines):
            line = self.lines[self.i]
            raise YamlError(line.number, "unexpected indentation or text `%s`" % line.text)
        return value

    def node(self, indent):
        line = self.lines[self.i]
        if line.indent < indent:
            return None
        if line.text == "-" or line.text.startswith("- "):
            return self.sequence(line.indent)
        if is_entry(line.text) is not None:
            return self.mapping(line.indent)
        self.i += 1
        return self.scalar(line.text, line.number)

    def scalar(self, text, number):
        if text[0] in "|>":
            raise YamlError(number, "block scalars (`|`, `>`) are not supported")
        if text[0] in "&*!":
            raise YamlError(number, "anchors, aliases and tags are not supported")
        return Flow(text, number).whole()

    def after_colon(self, rest, line, indent):
        """The value of `key:` whose text after the colon is rest."""
        if rest:
            return self.scalar(rest, line.number)
        if self.i < len(self.lines):
            nxt = self.lines[self.i]
            if nxt.indent > indent:
                return self.node(nxt.indent)
            if nxt.indent == indent and (nxt.text == "-" or nxt.text.startswith("- ")):
                return self.sequence(indent)
        return None

    def mapping(self, indent):
        out = {}
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.indent != indent:
                if line.indent > indent:
                    raise YamlError(line.number, "unexpected indentation")
                break
            entry = is_entry(line.text)
            if entry is None:
                if line.text == "-" or line.text.startswith("- "):
                    break
                raise YamlError(line.number, "expected `key: value`, found `%s`" % line.text)
            key, rest = entry
            if key in out:
                raise YamlError(line.number, "duplicate key `%s`" % key)
            self.i += 1
            out[key] = self.after_colon(rest, line, indent)
        return out

    def sequence(self, indent):
        out = []
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.indent != indent or not (line.text == "-" or line.text.startswith("- ")):
                if line.indent > indent:
                    raise YamlError(line.number, "unexpected indentation")
                break
            rest = line.text[1:].lstrip(" ")
            if not rest:
                self.i += 1
                if self.i < len(self.lines) and self.lines[self.i].indent > indent:
                    out.append(self.node(self.lines[self.i].indent))
                else:
                    out.append(None)
                continue
            # `- key: v` or `- - x`: the rest is a node at its own column.
            column = indent + len(line.text) - len(rest)
            if is_entry(rest) is not None or rest == "-" or rest.startswith("- "):
                self.lines[self.i] = Line(line.number, column, rest)
                out.append(self.node(column))
            else:
                self.i += 1
                out.append(self.scalar(rest, line.number))
        return out


def parse_yaml(text):
    return Block(text).parse()


# --- writing --------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./:@+=~-]*$")
FLOW_WIDTH = 80


def scalar_text(value):
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return ".nan"
        if value in (float("inf"), float("-inf")):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    text = str(value)
    if _PLAIN.match(text) and not text.endswith(":") and resolve(text) == text:
        return text
    return json.dumps(text, ensure_ascii=False)


def is_scalar(value):
    return not isinstance(value, (dict, list))


def flow_text(value):
    """`{ a: 1, b: x }` or `[a, b]` when every element is a scalar, else None."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        if not all(is_scalar(v) for v in value.values()):
            return None
        return "{ %s }" % ", ".join("%s: %s" % (scalar_text(k), scalar_text(v)) for k, v in value.items())
    if isinstance(value, list):
        if not value:
            return "[]"
        if not all(is_scalar(v) for v in value):
            return None
        return "[%s]" % ", ".join(scalar_text(v) for v in value)
    return scalar_text(value)


def emit(value, indent=0):
    """Block YAML for value, short scalar collections in flow style."""
    pad = " " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            head = "%s%s:" % (pad, scalar_text(key))
            flow = flow_text(item)
            if flow is not None and len(head) + 1 + len(flow) <= FLOW_WIDTH:
                lines.append("%s %s" % (head, flow))
            elif isinstance(item, dict):
                lines.append(head)
                lines.extend(emit(item, indent + 2))
            else:
                lines.append(head)
                lines.extend(emit(item, indent + 2))
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                inner = emit(item, indent + 2)
                lines.append("%s- %s" % (pad, inner[0][indent + 2:]))
                lines.extend(inner[1:])
            elif isinstance(item, list) and item and flow_text(item) is None:
                inner = emit(item, indent + 2)
                lines.append("%s- %s" % (pad, inner[0][indent + 2:]))
                lines.extend(inner[1:])
            else:
                lines.append("%s- %s" % (pad, flow_text(item)))
    else:
        lines.append(pad + scalar_text(value))
    return lines


def dump_yaml(value, header=None):
    lines = []
    if header:
        lines.extend("# " + h if h else "#" for h in header.splitlines())
    lines.extend(emit(value))
    return "\n".join(lines) + "\n"


# --- edits ---------------------------------------------------------------

NODE_KEYS = ("address", "election")


def edit(base, nodes, expel, replicasets, roles):
    """The topology base with the declared edits made (a new dict)."""
    topo = json.loads(json.dumps(base)) if base else {}
    if not isinstance(topo, dict):
        raise ValueError("the topology is not a mapping")
    sets = topo.setdefault("replicasets", {})
    if not isinstance(sets, dict):
        raise ValueError("`replicasets` is not a mapping")

    def where(name):
        for set_name, rs in sets.items():
            if isinstance(rs, dict) and isinstance(rs.get("nodes"), dict) and name in rs["nodes"]:
                return set_name
        return None

    def remove_node(name):
        # A node's http port goes with it (`listen` is keyed by node).
        for spec in (topo.get("roles") or {}).values():
            if isinstance(spec, dict) and isinstance(spec.get("listen"), dict):
                spec["listen"].pop(name, None)
        set_name = where(name)
        if set_name is not None:
            del sets[set_name]["nodes"][name]
            priority = sets[set_name].get("failover_priority")
            if isinstance(priority, list) and name in priority:
                priority.remove(name)
                if not priority:
                    del sets[set_name]["failover_priority"]

    for name, spec in (replicasets or {}).items():
        if spec is None:
            sets.pop(name, None)
            continue
        if not isinstance(spec, dict):
            raise ValueError("replicasets.%s must be a mapping or null" % name)
        unknown = sorted(set(spec) - set(("roles", "failover_priority")))
        if unknown:
            raise ValueError("replicasets.%s: unknown key(s) %s (roles, failover_priority)" % (name, ", ".join(unknown)))
        rs = sets.setdefault(name, {})
        for key in ("roles", "failover_priority"):
            if key in spec:
                if spec[key] is None:
                    rs.pop(key, None)
                else:
                    rs[key] = list(spec[key])
        rs.setdefault("nodes", {})
        # `nodes` after roles and failover_priority, as people write it.
        rs["nodes"] = rs.pop("nodes")

    for name, spec in (nodes or {}).items():
        spec = dict(spec or {})
        state = spec.pop("state", "present")
        if state not in ("present", "absent"):
            raise ValueError("nodes.%s.state must be present or absent" % name)
        if state == "absent":
            remove_node(name)
            continue
        target = spec.pop("replicaset", None) or where(name)
        if target is None:
            raise ValueError("nodes.%s: `replicaset` is required for a new node" % name)
        unknown = sorted(set(spec) - set(NODE_KEYS))
        if unknown:
            raise ValueError("nodes.%s: unknown key(s) %s (replicaset, address, election, state)" % (name, ", ".join(unknown)))
        current = where(name)
        old = {}
        if current is not None:
            old = sets[current]["nodes"][name] or {}
            if current != target:
                remove_node(name)
        new = dict(old)
        for key in NODE_KEYS:
            if spec.get(key) is not None:
                new[key] = spec[key]
        if "address" not in new:
            raise ValueError("nodes.%s: `address` is required for a new node" % name)
        rs = sets.setdefault(target, {"nodes": {}})
        if not isinstance(rs.get("nodes"), dict):
            rs["nodes"] = {}
        rs["nodes"][name] = new
        expelled = topo.get("expelled")
        if isinstance(expelled, list) and name in expelled:
            expelled.remove(name)
            if not expelled:
                del topo["expelled"]

    for name in expel or []:
        remove_node(name)
        expelled = topo.setdefault("expelled", [])
        if name not in expelled:
            expelled.append(name)

    if roles:
        settings = topo.setdefault("roles", {})
        for name, spec in roles.items():
            if spec is None:
                settings.pop(name, None)
            else:
                settings[name] = spec
        if not settings:
            del topo["roles"]

    # The order people write a topology in.
    order = ("cluster", "failover", "replicasets", "expelled", "roles")
    ordered = dict((k, topo[k]) for k in order if k in topo)
    ordered.update((k, v) for k, v in topo.items() if k not in ordered)
    return ordered


# --- the cohort command ----------------------------------------------------

_PROBLEM = re.compile(r"^(?P<path>.*?):(?P<line>[0-9]+):(?P<column>[0-9]+): (?P<message>.*)$")


def relabel(problem, path, name):
    if problem.startswith(path + ":"):
        return name + problem[len(path):]
    return problem


def with_source(problems, text):
    """Each FILE:LINE:COLUMN problem followed by its line of the text."""
    lines = text.splitlines()
    out = []
    for problem in problems:
        out.append(problem)
        m = _PROBLEM.match(problem)
        if m:
            number = int(m.group("line"))
            if 1 <= number <= len(lines):
                out.append("    %4d | %s" % (number, lines[number - 1]))
    return out


class Cohort(object):
    def __init__(self, module):
        self.module = module
        self.bin = module.params["cohort_bin"] or module.get_bin_path("cohort", opt_dirs=["/usr/bin", "/usr/local/bin"])
        if not self.bin:
            if module.check_mode and module.params["content"] is not None:
                # A first run in check mode: the package is not there yet.
                module.warn("not checked: the cohort command is not installed here yet")
                module.exit_json(
                    changed=True, outcome="would-commit", version=0, previous_version=0, changes=[],
                    text=module.params["content"],
                    diff=dict(before_header="no topology committed", after_header=module.params["name"],
                              before="", after=module.params["content"]))
            module.fail_json(msg="the cohort command is not installed here (is the cohort package installed?)")
        p = module.params
        if p["socket"]:
            self.target = ["--socket", p["socket"]]
        elif p["api"]:
            self.target = ["--api", p["api"]]
        else:
            self.target = []
        if p["token_file"]:
            self.target += ["--token-file", p["token_file"]]
        self.where = p["socket"] or p["api"] or "its default address"

    def run(self, args, data=None):
        return self.module.run_command([self.bin] + self.target + args, data=data, binary_data=True)

    def committed(self):
        """(version, text) of the committed topology, or None when the API cannot be reached."""
        rc, out, err = self.run(["--format", "json", "topology"])
        try:
            answer = json.loads(out)
        except ValueError:
            return None, err.strip() or out.strip()
        return (int(answer.get("version") or 0), answer.get("text") or ""), None

    def validate(self, path):
        rc, out, err = self.module.run_command([self.bin, "validate", "topology", path])
        problems = [line for line in (err + out).splitlines() if line.strip()]
        return rc == 0, problems

    def changes(self, path):
        rc, out, err = self.run(["topology", "diff", path])
        if rc != 0:
            return None
        return [line for line in out.splitlines() if line.strip()]

    def apply(self, path, timeout):
        rc, out, err = self.run(["--format", "json", "apply", path, "--wait", "--timeout", timeout])
        try:
            return json.loads(out), err
        except ValueError:
            return None, (err.strip() or out.strip() or "cohort apply exited with %d" % rc)


def node_reasons(answer):
    lines = []
    for r in answer.get("reasons") or []:
        lines.append("%s: %s" % (r.get("node"), r.get("reason")))
    for node in answer.get("silent") or []:
        lines.append("%s: silent: its vote never came" % node)
    for r in answer.get("not_reached") or []:
        lines.append("%s: not reached (%s)" % (r.get("node"), r.get("reason")))
    return lines


def main():
    module = AnsibleModule(
        argument_spec=dict(
            api=dict(type="str"),
            socket=dict(type="path"),
            token_file=dict(type="path", no_log=False),
            cohort_bin=dict(type="path"),
            content=dict(type="str"),
            name=dict(type="str", default="topology.yaml"),
            nodes=dict(type="dict"),
            expel=dict(type="list", elements="str"),
            replicasets=dict(type="dict"),
            roles=dict(type="dict"),
            apply=dict(type="bool", default=True),
            timeout=dict(type="str", default="60s"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    edits = any(p[k] for k in ("nodes", "expel", "replicasets", "roles"))
    if p["content"] is None and not edits:
        module.fail_json(msg="give the topology (content) or edits (nodes, expel, replicasets, roles)")

    cohort = Cohort(module)
    committed, unreachable = cohort.committed()
    if committed is None:
        # Checking alone needs no agent (e.g. before the first start).
        if p["apply"] and not module.check_mode:
            module.fail_json(msg="cannot read the committed topology from the agent at %s: %s" % (cohort.where, unreachable))
        module.warn("not compared with the committed topology: the agent at %s cannot be reached (%s)" % (cohort.where, unreachable))
        committed = (0, "")
    version, before = committed

    if edits:
        source = p["content"] if p["content"] is not None else before
        try:
            base = parse_yaml(source) if source else {}
        except YamlError as e:
            module.fail_json(
                msg="cannot edit the %s: %s%s; give the whole topology with `content` instead" % (
                    "given content" if p["content"] is not None else "committed topology (version %d)" % version,
                    e, "" if p["content"] is not None else " of `cohort topology`"))
        if base is not None and not isinstance(base, dict):
            module.fail_json(msg="the topology to edit is not a mapping")
        try:
            edited = edit(base or {}, p["nodes"], p["expel"], p["replicasets"], p["roles"])
        except ValueError as e:
            module.fail_json(msg="cannot make the edits: %s" % e)
        if before and base == edited and p["content"] is None:
            after = before  # nothing to change: keep the text, comments and all
        elif p["content"] is not None and base == edited:
            after = p["content"]
        else:
            after = dump_yaml(edited)
    else:
        after = p["content"]

    result = dict(changed=False, outcome="unchanged", version=version, previous_version=version,
                  changes=[], text=after)
    if version and after == before:
        module.exit_json(**result)

    # The text goes to a temp file: validate it, describe it, apply it.
    path = os.path.join(module.tmpdir, "topology.yaml")
    with open(path, "wb") as f:
        f.write(after.encode("utf-8"))
    ok, problems = cohort.validate(path)
    if not ok:
        problems = [relabel(x, path, p["name"]) for x in problems]
        module.fail_json(msg="the topology has problems; nothing was applied:\n%s" % "\n".join(with_source(problems, after)),
                         problems=problems, text=after)
    changes = cohort.changes(path) if version or not module.check_mode else None
    if changes is None:
        changes = ["(a first topology)"] if not version else []
    result["changes"] = changes
    result["diff"] = [
        dict(before_header="committed topology (version %d)" % version if version else "no topology committed",
             after_header=p["name"], before=before, after=after),
        dict(prepared="cohort topology diff:\n%s\n" % "\n".join("  " + c for c in changes)),
    ]
    if module.check_mode or not p["apply"]:
        result.update(changed=True, outcome="would-commit")
        module.exit_json(**result)

    answer, err = cohort.apply(path, p["timeout"])
    if answer is None:
        module.fail_json(msg="cohort apply failed: %s" % err, **result)
    result["result"] = answer
    outcome = answer.get("outcome")
    result["outcome"] = outcome
    result["version"] = answer.get("version") or version
    if outcome == "committed":
        if answer.get("finished") is False:
            module.warn("version %s is committed but not every node acknowledged it in %s: %s" % (
                answer.get("version"), p["timeout"], "; ".join(node_reasons(answer)) or "see `cohort status`"))
        result["changed"] = True
        module.exit_json(**result)
    if outcome == "unchanged":
        module.exit_json(**result)
    if outcome == "invalid":
        problems = [relabel(x, "topology.yaml", p["name"]) for x in answer.get("problems") or []]
        module.fail_json(msg="the agent refused the topology; nothing was applied:\n%s" % "\n".join(with_source(problems, after)),
                         problems=problems, **result)
    reasons = node_reasons(answer)
    module.fail_json(msg="%s\n%s" % (answer.get("message") or "aborted", "\n".join("  " + r for r in reasons)),
                     reasons=reasons, **result)


if __name__ == "__main__":
    main()
