"""Where slots live: site-aware, balanced assignment plans. Pure, no I/O.

Primaries take contiguous, equal ranges (scans then touch few nodes); each replica goes to
another site than the slot's other copies whenever such a site has a node, the least loaded
such node, keeping runs of consecutive slots on the same replica.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from itertools import zip_longest

from .slotmap import Change, SlotEntry, SlotMap


def interleave_sites(nodes: Mapping[str, str]) -> list[str]:
    """Node names ordered so that neighbours sit on different sites: a1 b1 a2 b2 ..."""
    by_site: dict[str, list[str]] = {}
    for name in sorted(nodes):
        by_site.setdefault(nodes[name], []).append(name)
    columns = zip_longest(*(by_site[s] for s in sorted(by_site)))
    return [n for column in columns for n in column if n is not None]


BLOCK = 64  # replicas are chosen per block of consecutive slots: fewer, longer ranges
RUN_SLACK = 4  # a further replica's run ends once it holds this many more copies than a fresh pick


def pick_replicas(
    primary: str,
    nodes: Mapping[str, str],
    copies: int,
    load: Mapping[str, int],
    exclude: tuple[str, ...] = (),
    existing: tuple[str, ...] = (),
) -> list[str]:
    """New replicas so that the slot has `copies` copies with the `existing` ones: nodes on sites
    without a copy first, least loaded first."""
    chosen: list[str] = []
    while len(existing) + len(chosen) < copies - 1:
        used_sites = {nodes.get(primary)} | {nodes.get(r) for r in (*existing, *chosen)}
        candidates = [n for n in nodes if n != primary and n not in chosen and n not in existing and n not in exclude]
        if not candidates:
            break
        pool = [n for n in candidates if nodes[n] not in used_sites] or candidates
        chosen.append(min(pool, key=lambda n: (load.get(n, 0), n)))
    return chosen


def initial(nodes: Mapping[str, str], slots: int, replication_factor: int) -> list[Change]:
    """A fresh map for nodes {name: site}: equal contiguous primary ranges, site-aware replicas.

    First every primary's range is cut into equal contiguous parts, one per node that may hold its
    first replica (another site's, when there is one), least loaded first. Then (factor 3) each
    slot's further replicas are picked knowing every first replica: the least loaded nodes that
    add a site, kept the same over runs of up to BLOCK consecutive slots while they still fit.
    """
    order = interleave_sites(nodes)
    if not order:
        return []
    copies = min(replication_factor, len(order))
    load = {n: 0 for n in order}
    bounds = [slot * len(order) // slots for slot in range(slots)]
    plan: list[tuple[int, str, list[str]]] = []
    for index, primary in enumerate(order):
        range_slots = [s for s in range(slots) if bounds[s] == index]
        others = [n for n in order if n != primary]
        pool = [n for n in others if nodes[n] != nodes[primary]] or others
        pool.sort(key=lambda n: (load[n], n))
        for i, slot in enumerate(range_slots):
            replicas = [pool[i * len(pool) // len(range_slots)]] if pool and copies > 1 else []
            for r in replicas:
                load[r] += 1
            plan.append((slot, primary, replicas))
    if copies > 2:
        # the ranges take turns, a slot each, so no range finds the nodes it could use full already
        ranges: dict[str, list[tuple[int, str, list[str]]]] = {}
        for entry in plan:
            ranges.setdefault(entry[1], []).append(entry)
        runs: dict[str, tuple[list[str], int]] = {}
        for turn in zip_longest(*ranges.values()):
            for entry in turn:
                if entry is not None:
                    _further_replicas(entry[1], entry[2], nodes, copies, load, runs)
    return [Change(slot, primary, replicas, list(replicas)) for slot, primary, replicas in plan]


def _further_replicas(
    primary: str,
    replicas: list[str],
    nodes: Mapping[str, str],
    copies: int,
    load: dict[str, int],
    runs: dict[str, tuple[list[str], int]],
) -> None:
    """Add the replicas beyond the first to one slot: the previous slot of the same range's while
    its run is shorter than BLOCK, they add as many sites as a fresh pick would and hold at most
    RUN_SLACK more copies than it; else a fresh pick of the least loaded (pick_replicas)."""
    fresh = pick_replicas(primary, nodes, copies, load, existing=tuple(replicas))
    run, length = runs.get(primary, ([], 0))
    keep = [n for n in run if n != primary and n not in replicas][: copies - 1 - len(replicas)]
    sites_kept = len({nodes[n] for n in (primary, *replicas, *keep)})
    sites_fresh = len({nodes[n] for n in (primary, *replicas, *fresh)})
    fits = sum(load[n] for n in keep) <= sum(load[n] for n in fresh) + RUN_SLACK
    if length < BLOCK and len(keep) == len(fresh) and sites_kept >= sites_fresh and fits:
        extra = keep
        runs[primary] = (run, length + 1)
    else:
        extra = fresh
        runs[primary] = (fresh, 1)
    for r in extra:
        load[r] += 1
    replicas += extra


def from_claims(claims: Mapping[int, list[tuple[str, str, int, int, int]]], slots: int) -> list[Change]:
    """Rebuild a map from stores' inventories [(name, role, seq, data_epoch, epoch)] per slot (rule 4).

    The copy with the highest (data_epoch, seq) wins, ties going to the newer assignment epoch and
    then to the one claiming primary; the other copies at the same (data_epoch, seq) are in sync,
    the rest need a sync.
    """
    changes = []
    for slot in range(slots):
        slot_claims = claims.get(slot)
        if not slot_claims:
            continue
        ranked = sorted(slot_claims, key=lambda c: (c[3], c[2], c[4], c[1] == "primary"), reverse=True)
        best = ranked[0]
        replicas = [c[0] for c in ranked[1:]]
        isr = [c[0] for c in ranked[1:] if (c[3], c[2]) == (best[3], best[2])]
        changes.append(Change(slot, best[0], replicas, isr))
    return changes


def repair(
    slotmap: SlotMap,
    nodes: Mapping[str, str],
    replication_factor: int,
    *,
    leaving: Collection[str] = (),
    moving: Collection[int] = (),
) -> tuple[list[Change], int]:
    """After failures, a plan that keeps every slot served and copied: (changes, primaries promoted).

    nodes: {name: site} of the stores that are up. A slot whose primary is down is promoted to an
    in-sync replica that is up (rule 1: only ISR members); with none up it is left as it is, to come
    back when a copy returns. Down replicas leave the slot; missing copies are added site-aware on
    the least loaded nodes that are not `leaving` (draining: they still serve what they hold),
    and join the ISR after a full sync from the primary. Copies crowded on
    one site (after a whole site was down) get one more copy on the returned site, and the surplus
    copy leaves only once the in-sync copies span the sites again. Slots `moving` (migration.py
    holds an extra copy on purpose) keep their copies unless one is down.
    """
    up = nodes
    nodes = {n: s for n, s in up.items() if n not in leaving}  # where new copies may go
    copies = max(1, min(replication_factor, len(nodes)))
    want_sites = min(copies, len(set(nodes.values())))
    load: dict[str, int] = {n: 0 for n in nodes}
    for e in slotmap.entries:
        for r in e.replicas:
            if r in load:
                load[r] += 1
    changes: list[Change] = []
    promoted = 0
    for slot, e in enumerate(slotmap.entries):
        if e.primary is None:
            continue
        primary = e.primary
        if primary not in up:
            candidates = [r for r in e.isr if r in nodes] or [r for r in e.isr if r in up]
            if not candidates:
                continue
            primary = candidates[0]
            promoted += 1
        replicas = [r for r in e.replicas if r in up and r != primary]
        isr = [r for r in e.isr if r in replicas]
        if slot in moving:
            pass  # the move adds and removes copies itself; only down copies leave
        elif len(replicas) + 1 < copies:
            extra = pick_replicas(primary, nodes, copies, load, existing=tuple(replicas))
            for r in extra:
                load[r] += 1
            replicas += extra
        elif len(replicas) + 1 == copies and len(_sites(up, [primary, *replicas])) < want_sites:
            # a whole site was down: one copy more on a site without one; the surplus leaves once in sync
            extra = [
                r
                for r in pick_replicas(primary, nodes, copies + 1, load, existing=tuple(replicas))
                if nodes[r] not in _sites(up, [primary, *replicas])
            ]
            for r in extra:
                load[r] += 1
            replicas += extra
        elif len(replicas) + 1 > copies and len(_sites(up, [primary, *isr])) >= want_sites:
            for r in sorted(replicas, key=lambda n: (n in isr, n not in leaving, n)):  # out-of-sync, leaving first
                others = [primary, *(x for x in isr if x != r)]
                if len(replicas) + 1 > copies and len(_sites(up, others)) >= want_sites:
                    replicas.remove(r)
                    if r in isr:
                        isr.remove(r)
        if (primary, replicas, isr) != (e.primary, e.replicas, e.isr):
            changes.append(Change(slot, primary, replicas, isr))
    return changes, promoted


def _sites(nodes: Mapping[str, str], names: list[str]) -> set[str]:
    return {nodes[n] for n in names if n in nodes}


Position = tuple[int, int, int]  # (data_epoch, seq, assignment epoch) a copy reported for a slot


def catch_up(
    slotmap: SlotMap,
    name: str,
    positions: Mapping[str, Mapping[int, Position] | None],
    trusted: Collection[str],
    up: Collection[str],
    restarted: bool,
    frozen: Collection[str] = (),
) -> list[Change]:
    """Slots where the copy on `name` may hold less than it acknowledged or than an in-sync replica
    holds: a plan that never lets such a copy overwrite a newer one (rule 2).

    As primary: an up ISR member takes over and `name` becomes a replica synced from it. After a
    restart (an unsynced log tail may be gone) any up ISR member in `trusted` (it did not restart,
    so it holds every committed write) qualifies; otherwise one whose position, reported under the
    current leadership, is ahead of what `name` reports. As a restarted ISR replica: it leaves the
    slot (a copy is added back and fully synced) unless the primary is `frozen` (not serving since
    it reported) and `name` reported at least the primary's position.
    """
    mine = positions.get(name)
    changes: list[Change] = []
    for slot, e in enumerate(slotmap.entries):
        own = mine.get(slot, (0, 0, 0))[:2] if mine is not None else None
        if e.primary == name:
            successor = _successor(e, slot, own, positions, trusted, up, restarted)
            if successor is not None:
                replicas = [r for r in e.replicas if r != successor] + [name]
                changes.append(Change(slot, successor, replicas, [r for r in e.isr if r != successor]))
        elif restarted and name in e.isr and e.primary is not None:
            primary_at = (positions.get(e.primary) or {}).get(slot) if e.primary in frozen else None
            if own is None or primary_at is None or own < primary_at[:2]:
                changes.append(
                    Change(slot, e.primary, [r for r in e.replicas if r != name], [r for r in e.isr if r != name])
                )
    return changes


def _successor(
    e: SlotEntry,
    slot: int,
    own: tuple[int, int] | None,
    positions: Mapping[str, Mapping[int, Position] | None],
    trusted: Collection[str],
    up: Collection[str],
    restarted: bool,
) -> str | None:
    best: tuple[tuple[bool, tuple[int, int]], str] | None = None
    for r in e.isr:
        reported = (positions.get(r) or {}).get(slot)
        at = reported[:2] if reported is not None and reported[2] >= e.leader_epoch else None
        ahead = own is not None and at is not None and at > own
        if r not in up or not (ahead or (restarted and r in trusted)):
            continue
        rank = (r in trusted, at or (0, 0))
        if best is None or rank > best[0]:
            best = (rank, r)
    return None if best is None else best[1]
