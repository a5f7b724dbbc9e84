"""Helpers shared by the policies: replication and equal-count packing, vectorized over
layers (rows). Shapes are given as [rows, items]."""

from __future__ import annotations

import numpy as np


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy largest-first packing of items into packs of equal item count.

    weight: [X, n] with n % num_packs == 0. Items are taken heaviest first (ties: lower
    index first) and go to the lightest pack that still has room (ties: lower pack).
    Returns (pack_index [X, n], rank_in_pack [X, n]).
    """
    X, n = weight.shape
    per_pack = n // num_packs
    if per_pack == 1:
        return np.broadcast_to(np.arange(n), (X, n)).copy(), np.zeros((X, n), dtype=np.int64)
    order = np.argsort(-weight, axis=1, kind="stable")
    rows = np.arange(X)
    pack_w = np.zeros((X, num_packs))
    pack_n = np.zeros((X, num_packs), dtype=np.int64)
    pack_index = np.empty((X, n), dtype=np.int64)
    rank_in_pack = np.empty((X, n), dtype=np.int64)
    for j in range(n):
        item = order[:, j]
        pack = np.argmin(np.where(pack_n < per_pack, pack_w, np.inf), axis=1)
        pack_index[rows, item] = pack
        rank_in_pack[rows, item] = pack_n[rows, pack]
        pack_w[rows, pack] += weight[rows, item]
        pack_n[rows, pack] += 1
    return pack_index, rank_in_pack


def replicate_by_load(weight: np.ndarray, num_slots: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give each extra slot to the item with the largest load per replica.

    weight: [X, n]; num_slots >= n. Returns (slot2item [X, num_slots], rank [X, num_slots]
    replica index of each slot, count [X, n] replicas per item). Slots 0..n-1 hold items
    0..n-1; the rest are the extra replicas in the order they were granted.
    """
    X, n = weight.shape
    slot2item = np.empty((X, num_slots), dtype=np.int64)
    slot2item[:, :n] = np.arange(n)
    rank = np.zeros((X, num_slots), dtype=np.int64)
    count = np.ones((X, n), dtype=np.int64)
    rows = np.arange(X)
    for s in range(n, num_slots):
        item = np.argmax(weight / count, axis=1)
        slot2item[:, s] = item
        rank[:, s] = count[rows, item]
        count[rows, item] += 1
    return slot2item, rank, count


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """[X, n] row-wise permutation -> its inverse."""
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), axis=1)
    return inv


def slots_from_packing(pack_index: np.ndarray, rank_in_pack: np.ndarray, slot2item: np.ndarray,
                       slots_per_pack: int) -> np.ndarray:
    """Lay packed items out as physical slots: item i goes to slot pack*S + rank.

    pack_index, rank_in_pack, slot2item: [X, n] -> [X, n] item held by each physical slot.
    """
    phys = pack_index * slots_per_pack + rank_in_pack
    return np.take_along_axis(slot2item, inverse_permutation(phys), axis=1)
