"""`eplb`: the DeepSeek EPLB algorithm (what SGLang, vLLM and TensorRT-LLM run), written
from its published description. Token counts only; GPUs assumed identical.

Hierarchical when the expert groups divide evenly over the nodes: pack groups onto nodes
(heaviest group to the lightest node with room), replicate inside each node (each extra
slot to the expert with the largest load per replica), then pack replicas onto the node's
GPUs by load per replica, equal count per GPU. Otherwise global: one group, one node.
"""

from __future__ import annotations

import numpy as np

from vibe.errors import VibeError
from vibe.model import Placement
from vibe.policies._packing import balanced_packing, inverse_permutation, replicate_by_load
from vibe.policies.base import register_policy, slots_per_gpu


def rebalance_experts(weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int,
                      num_gpus: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB's entry point.

    weight: [L, E] load per logical expert. Returns phy2log [L, num_replicas],
    log2phy [L, E, max_replicas] (padded with -1) and logcnt [L, E].
    """
    weight = np.asarray(weight, dtype=np.float64)
    if num_groups % num_nodes == 0:
        phy2log, phyrank, logcnt = rebalance_hierarchical(weight, num_replicas, num_groups, num_nodes, num_gpus)
    else:
        phy2log, phyrank, logcnt = rebalance_hierarchical(weight, num_replicas, 1, 1, num_gpus)
    L, E = weight.shape
    log2phy = np.full((L, E, int(logcnt.max())), -1, dtype=np.int64)
    rows = np.broadcast_to(np.arange(L)[:, None], phy2log.shape)
    log2phy[rows, phy2log, phyrank] = np.broadcast_to(np.arange(num_replicas), phy2log.shape)
    return phy2log, log2phy, logcnt


def rebalance_hierarchical(weight: np.ndarray, num_physical: int, num_groups: int, num_nodes: int,
                           num_gpus: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """weight: [L, E] -> (phy2log [L, P], phyrank [L, P], logcnt [L, E])."""
    L, E = weight.shape
    _check_shape(E, num_physical, num_groups, num_nodes, num_gpus)
    group_size = E // num_groups
    groups_per_node = num_groups // num_nodes
    per_gpu = num_physical // num_gpus
    e_per_node = E // num_nodes

    # 1. groups -> nodes; "mlog" numbers experts node by node.
    group_tokens = weight.reshape(L, num_groups, group_size).sum(-1)
    g_pack, g_rank = balanced_packing(group_tokens, num_nodes)
    log2mlog = (((g_pack * groups_per_node + g_rank) * group_size)[:, :, None]
                + np.arange(group_size)).reshape(L, E)
    mlog2log = inverse_permutation(log2mlog)

    # 2. replicas inside each node (rows become (layer, node)).
    mlog_tokens = np.take_along_axis(weight, mlog2log, axis=1).reshape(L * num_nodes, e_per_node)
    phy2mlog, phyrank, mlogcnt = replicate_by_load(mlog_tokens, num_physical // num_nodes)

    # 3. replicas -> GPUs of the node, by load per replica.
    phy_tokens = np.take_along_axis(mlog_tokens / mlogcnt, phy2mlog, axis=1)
    pack, rank = balanced_packing(phy_tokens, num_gpus // num_nodes)
    pphy2phy = inverse_permutation(pack * per_gpu + rank)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=1)
    pphy2mlog = (pphy2mlog.reshape(L, num_nodes, -1) + np.arange(0, E, e_per_node)[None, :, None]).reshape(L, -1)
    pphy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=1)
    pphyrank = np.take_along_axis(phyrank, pphy2phy, axis=1).reshape(L, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(L, -1), log2mlog, axis=1)
    return pphy2log, pphyrank, logcnt


def _check_shape(E: int, P: int, num_groups: int, num_nodes: int, num_gpus: int) -> None:
    problems = []
    if E % num_groups:
        problems.append(f"{E} experts do not split into {num_groups} groups")
    if num_groups % num_nodes:
        problems.append(f"{num_groups} groups do not split over {num_nodes} nodes")
    if num_gpus % num_nodes:
        problems.append(f"{num_gpus} GPUs do not split over {num_nodes} nodes")
    if P % num_gpus:
        problems.append(f"{P} slots do not split over {num_gpus} GPUs")
    if P < E:
        problems.append(f"{P} slots cannot hold {E} experts")
    if problems:
        raise VibeError("eplb: " + "; ".join(problems))


def nodes_are_contiguous(nodes: np.ndarray) -> bool:
    """True when ranks are grouped into equal-size nodes in order (EPLB's assumption)."""
    uniq = np.unique(nodes)
    k = len(uniq)
    return len(nodes) % k == 0 and np.array_equal(nodes, np.repeat(np.arange(k), len(nodes) // k)[: len(nodes)]) \
        and np.array_equal(uniq, np.arange(k))


@register_policy("eplb")
def eplb(loads, cluster, options):
    G = cluster.num_gpus
    P = slots_per_gpu(loads, cluster, options) * G
    num_nodes = cluster.num_nodes if nodes_are_contiguous(cluster.nodes) else 1
    num_groups = options.num_groups or 1
    if options.num_groups and (num_groups % num_nodes or loads.num_experts % num_groups):
        raise VibeError(f"--num-groups {num_groups} must divide the {loads.num_experts} experts and be a "
                        f"multiple of the {num_nodes} nodes")
    phy2log, _, _ = rebalance_experts(loads.counts, P, num_groups, num_nodes, G)
    return Placement.init_by_mapping(phy2log, G, loads.num_experts, loads.layer_ids, "eplb")
