"""Editing parsed JSON documents in tests: one entry replaced or removed at a path."""

from __future__ import annotations

import copy

DELETE = object()  # the value that removes the entry instead of replacing it


def with_entry(doc, path: tuple, value):
    """A deep copy of `doc` with the entry at `path` (keys and list indices) replaced by
    `value`, or removed when `value` is DELETE; the empty path replaces the whole doc."""
    if not path:
        return value
    doc = copy.deepcopy(doc)
    *head, last = path
    node = doc
    for key in head:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc
