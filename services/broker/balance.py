"""Which copies to move so that every store holds its share: a plan of moves. Pure, no I/O.

A move takes the copy of one slot on `source` to `target` (migration.py runs it as steps). Moving
a primary onto a store that already holds an in-sync replica of the slot is a swap (no data to
copy: the two exchange roles); any other move first copies the slot to the target.

Order of business, as tikv/pd's balance schedulers: copies on leaving (draining) stores first,
alone until every one is under way (a stopping store waits for them), then equal primary counts,
then equal replica counts, each store within one of the mean. Site diversity never drops: a move
is taken only if the slot's copies span at least as many sites after it as before. Moves are
bounded per store (in and out together, counting moves already running) and in total, so a join
or drain proceeds as a steady stream, not a stampede.

Load (`load_plan`, once the counts are even) moves hot primaries off the busiest store in
exchange for cold ones of the idlest, so the counts stay even and count balancing never undoes it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from .slotmap import SlotMap

JOIN, DRAIN, COUNT, LOAD = "join", "drain", "count", "load"
NARROW = 0.2  # a load move narrows the gap between its two stores by at least this share of it


@dataclass(frozen=True)
class Move:
    slot: int
    source: str
    target: str
    primary: bool  # the copy that moves is the slot's primary
    reason: str
    swap: bool = False  # a primary move onto an in-sync replica: the source stays as a replica


def is_swap(slotmap: SlotMap, move: Move) -> bool:
    """A primary move onto an in-sync replica: the two copies exchange roles, nothing is copied."""
    e = slotmap.entry(move.slot)
    return move.primary and e.primary == move.source and move.target in e.isr


class _Plan:
    """The map as the planned moves leave it, with per-store counts kept current."""

    def __init__(
        self,
        slotmap: SlotMap,
        sites: Mapping[str, str],
        busy: Mapping[str, int],
        per_node: int,
        limit: int,
        skip: Collection[int],
    ) -> None:
        self.sites = sites
        self.per_node = per_node
        self.limit = limit
        self.moves: list[Move] = []
        self.moved: set[int] = set(skip)  # a slot moves at most once per plan
        self.busy = dict(busy)
        self.members: dict[int, list[str]] = {}  # slot -> [primary, *replicas] after the moves
        self.isr: dict[int, tuple[str, ...]] = {}  # a copy or two: a tuple is the cheapest to search
        # per store, its slots in the order they came (a dict as an ordered set: a move takes one
        # out in O(1)); picks take the last ones first
        self.primaries: dict[str, dict[int, None]] = {n: {} for n in sites}
        self.replicas: dict[str, dict[int, None]] = {n: {} for n in sites}
        primaries, replicas, members, isr = self.primaries, self.replicas, self.members, self.isr
        for slot, e in enumerate(slotmap.entries):  # a plan starts with this walk: kept lean
            if e.primary is None:  # skipped slots count too: they are held, only not moved
                continue
            members[slot] = [e.primary, *e.replicas]
            isr[slot] = tuple(e.isr)
            if e.primary in primaries:
                primaries[e.primary][slot] = None
            for r in e.replicas:
                if r in replicas:
                    replicas[r][slot] = None

    def full(self) -> bool:
        return len(self.moves) >= self.limit

    def free(self, name: str) -> bool:
        return self.busy.get(name, 0) < self.per_node

    def spread(self, names: list[str]) -> int:
        return len({self.sites.get(n, "") for n in names})

    def keeps_sites(self, slot: int, source: str, target: str) -> bool:
        members = self.members[slot]
        after = [target if m == source else m for m in members]
        return self.spread(after) >= self.spread(members)

    def assume(self, move: Move) -> None:
        """A move already running: count the map as it will leave it (else the next plan moves
        copies back and forth), and leave its slot alone. The map may show any of its steps
        already (the target added, the primary switched), so the end state is built from the
        copies there are now, not replayed."""
        if move.slot not in self.members:
            return
        self._set(move.slot, _after(self.members[move.slot], move.source, move.target, move.primary, move.swap))
        self.moved.add(move.slot)

    def take(self, slot: int, source: str, target: str, primary: bool, reason: str) -> None:
        members = self.members[slot]
        swap = primary and target in members
        self._set(slot, _after(members, source, target, primary, swap))
        self.moves.append(Move(slot, source, target, primary, reason, swap))
        self.moved.add(slot)
        self.busy[source] = self.busy.get(source, 0) + 1
        self.busy[target] = self.busy.get(target, 0) + 1

    def _set(self, slot: int, members: list[str]) -> None:
        """The slot's copies are now `members` (primary first): per-store counts follow."""
        for name in self.members[slot]:
            for held in (self.primaries.get(name), self.replicas.get(name)):
                if held is not None:
                    held.pop(slot, None)
        self.members[slot] = members
        if members and members[0] in self.primaries:
            self.primaries[members[0]][slot] = None
        for name in members[1:]:
            if name in self.replicas:
                self.replicas[name][slot] = None


def _after(members: list[str], source: str, target: str, primary: bool, swap: bool) -> list[str]:
    """A slot's copies once a move is done, from its copies at any step of it: a primary move
    makes the target primary (the source stays a replica only in a swap); a replica move
    replaces the source by the target."""
    others = [m for m in members[1:] if m not in (source, target)]
    if primary:
        return [target, *others, *([source] if swap else [])]
    head = members[0] if members and members[0] not in (source, target) else None
    return [*([head] if head else []), *others, target]


def plan(
    slotmap: SlotMap,
    sites: Mapping[str, str],
    leaving: Collection[str] = (),
    *,
    busy: Mapping[str, int] | None = None,
    per_node: int = 4,
    limit: int = 64,
    skip: Collection[int] = (),
    running: Collection[Move] = (),
) -> list[Move]:
    """Moves to start now. `sites`: {name: site} of the stores that are up (leaving ones included);
    `leaving`: stores to empty; `busy`: moves already running per store; `skip`: slots not to touch
    (not fully copied, moved a moment ago); `running`: the moves under way, counted as done."""
    staying = {n: s for n, s in sites.items() if n not in leaving}
    if not staying:
        return []
    p = _Plan(slotmap, sites, busy or {}, per_node, limit, skip)
    for move in running:
        p.assume(move)
    draining = [n for n in sites if n in leaving]
    _drain(p, staying, draining)
    if any(p.primaries[n] or p.replicas[n] for n in draining):
        # copies wait on a draining store (the map as the moves leave it): the drain takes every
        # free move, as a stopping store waits for it (drain_timeout); counts are evened out after
        return p.moves
    _balance(p, staying, p.primaries, primary=True)
    _balance(p, staying, p.replicas, primary=False)
    return p.moves


def _drain(p: _Plan, staying: Mapping[str, str], leaving: list[str]) -> None:
    for name in sorted(leaving):
        for slot in sorted(p.primaries.get(name, {})):
            if p.full():
                return
            if not p.free(name):
                break  # this store is busy: the next leaving one may still move
            if slot in p.moved:
                continue
            members = p.members[slot]
            # an in-sync replica that stays takes over at once (swap); else the least loaded store
            swaps = [r for r in members[1:] if r in staying and r in p.isr[slot] and p.free(r)]
            others = [n for n in staying if n not in members and p.free(n) and p.keeps_sites(slot, name, n)]
            pool = swaps or others
            if pool:
                target = min(pool, key=lambda n: (len(p.primaries[n]), n))
                p.take(slot, name, target, True, DRAIN)
        for slot in sorted(p.replicas.get(name, {})):
            if p.full():
                return
            if not p.free(name):
                break
            if slot in p.moved:
                continue
            members = p.members[slot]
            pool = [n for n in staying if n not in members and p.free(n)]
            diverse = [n for n in pool if p.keeps_sites(slot, name, n)]
            if diverse or pool:
                target = min(diverse or pool, key=lambda n: (len(p.replicas[n]), n))
                p.take(slot, name, target, False, DRAIN)


def _balance(p: _Plan, staying: Mapping[str, str], held: dict[str, dict[int, None]], primary: bool) -> None:
    """Move copies from the fullest staying store to the emptiest until all are within one."""
    names = sorted(staying)
    stuck: set[tuple[str, str]] = set()
    while not p.full():
        ready = [n for n in names if p.free(n)]
        if len(ready) < 2:
            return
        by_count = sorted(ready, key=lambda n: (len(held[n]), n))
        moved = False
        for low in by_count:
            for high in reversed(by_count):
                if len(held[high]) - len(held[low]) <= 1:
                    break
                if (high, low) in stuck:
                    continue
                slot = _pick(p, held[high], high, low, primary)
                if slot is None:
                    stuck.add((high, low))
                    continue
                p.take(slot, high, low, primary, JOIN if not held[low] else COUNT)
                moved = True
                break
            if moved:
                break
        if not moved:
            return


def _pick(p: _Plan, slots: dict[int, None], source: str, target: str, primary: bool) -> int | None:
    """A slot of `source` whose copy may go to `target`: for primaries a swap onto an in-sync replica
    first (nothing to copy), then the highest slots (ranges stay contiguous at the low end)."""
    # a swap needs a replica of `target`: where it holds none (a store that just joined), no slot
    # of `source` is looked at twice in every pick of the plan
    swaps = primary and any(
        p.members[s][0] == source and target in p.isr[s] for s in p.replicas.get(target, ()) if s not in p.moved
    )
    best: int | None = None
    for slot in reversed(slots):
        if slot in p.moved:
            continue
        members = p.members[slot]
        if target in members:
            if swaps and target in p.isr[slot] and members[0] == source:
                return slot  # a swap keeps the same copies, so the same sites
            continue
        if best is None and p.keeps_sites(slot, source, target):
            best = slot
            if not swaps:
                return best
    return best


def still_valid(slotmap: SlotMap, move: Move) -> bool:
    """A move planned earlier may still start: the slot is as the plan saw it (the source holds
    the copy in that role; the target holds none, or an in-sync replica for a swap)."""
    e = slotmap.entry(move.slot)
    if e.primary is None or move.source not in e.members() or (e.primary == move.source) != move.primary:
        return False
    if move.target in e.members():
        return move.swap and move.target in e.isr
    return not move.swap


def take_ready(
    ahead: list[Move], busy: Mapping[str, int], per_node: int, room: int, ok: Callable[[Move], bool]
) -> tuple[list[Move], list[Move]]:
    """(the moves of a plan made ahead to start now, the ones left for later). In plan order, a
    move starts when both its stores have room (`busy`: moves running per store, at most
    `per_node`) and `room` allows; `ok` says whether it still may (a move that may not is
    dropped). While a drain move waits, nothing else starts (drains go first, as in `plan`)."""
    counts = dict(busy)
    draining = any(m.reason == DRAIN for m in ahead)
    take: list[Move] = []
    keep: list[Move] = []
    for move in ahead:
        free = counts.get(move.source, 0) < per_node and counts.get(move.target, 0) < per_node
        if len(take) < room and free and (move.reason == DRAIN or not draining):
            if ok(move):
                take.append(move)
                counts[move.source] = counts.get(move.source, 0) + 1
                counts[move.target] = counts.get(move.target, 0) + 1
        else:
            keep.append(move)
    return take, keep


def overloaded(
    scores: Mapping[str, float], requests: Mapping[str, float], threshold: float, floor: float
) -> tuple[str | None, str]:
    """(the store to take load off, why): the busiest store when its load is more than `threshold`
    above the mean and the stores serve at least `floor` requests/s on average; else None."""
    if len(scores) < 2:
        return None, "fewer than two stores"
    mean = sum(scores.values()) / len(scores)
    name = max(scores, key=lambda n: (scores[n], n))
    if mean <= 0 or scores[name] <= mean * (1 + threshold):
        return None, "within the threshold"
    if sum(requests.values()) / len(requests) < floor:
        return None, "below the floor"
    return name, f"{name} over the threshold"


def load_plan(
    slotmap: SlotMap,
    sites: Mapping[str, str],
    requests: Mapping[str, float],
    hot: Mapping[str, list[tuple[int, float]]],
    *,
    hottest: int,
    least: float,
    busy: Mapping[str, int] | None = None,
    per_node: int = 4,
    limit: int = 8,
    skip: Collection[int] = (),
) -> list[Move]:
    """Moves that even out the stores' client request rates (`requests`: {name: requests/s} of the
    stores that stay). `hot`: each store's hottest slots [(slot, requests/s)], at most `hottest`
    of them (a slot not listed had at most the last one's rate). Each step takes the busiest and
    the idlest store and swaps one of the busiest's hot primaries for one of the idlest's cold
    ones: the hot slot whose rate comes closest to half their gap, and only if the swap narrows
    their gap by at least NARROW (so two stores never just trade places, and nothing moves back
    and forth), the slot carries at least `least` requests/s, and the swap keeps both slots' site
    diversity. Swapping keeps primary counts as they are."""
    p = _Plan(slotmap, sites, busy or {}, per_node, limit, skip)
    rates = dict(requests)
    listed = {name: {slot for slot, _ in items} for name, items in hot.items()}
    while len(p.moves) + 2 <= p.limit and len(rates) >= 2:
        order = sorted(rates, key=lambda n: (rates[n], n))
        high = order[-1]
        if not p.free(high):
            return p.moves
        for low in order[:-1]:  # the idlest store first, then the next idlest
            gap = rates[high] - rates[low]
            if gap <= 0 or not p.free(low):
                continue
            cold_rate = hot[low][-1][1] if len(hot.get(low, [])) >= hottest else 0.0
            chosen: tuple[int, float] | None = None
            for slot, rate in hot.get(high, []):
                members = p.members.get(slot)
                net = rate - cold_rate
                narrows = abs(gap - 2 * net) <= gap * (1 - NARROW)  # no mere trading places
                if slot in p.moved or not members or members[0] != high or rate < least or not narrows:
                    continue
                if not _may_take(p, slot, high, low):
                    continue
                if chosen is None or abs(net - gap / 2) < abs(chosen[1] - cold_rate - gap / 2):
                    chosen = (slot, rate)
            cold = _coldest(p, low, high, listed.get(low, set())) if chosen is not None else None
            if chosen is not None and cold is not None:
                p.take(chosen[0], high, low, True, LOAD)
                p.take(cold, low, high, True, LOAD)
                rates[high] -= chosen[1] - cold_rate
                rates[low] += chosen[1] - cold_rate
                break
        else:
            return p.moves
    return p.moves


def _may_take(p: _Plan, slot: int, source: str, target: str) -> bool:
    """Whether `target` may take over the primary of `slot` from `source`: as a swap when it holds
    an in-sync replica (the same copies, the same sites), else as a move that keeps the sites."""
    if target in p.members[slot]:
        return target in p.isr[slot]
    return p.keeps_sites(slot, source, target)


def _coldest(p: _Plan, name: str, other: str, hot: Collection[int]) -> int | None:
    """A primary of `name` with no listed load that may go to `other`: one where `other` holds an
    in-sync replica first (a swap, nothing to copy), then the highest."""
    best: int | None = None
    for slot in reversed(p.primaries.get(name, {})):
        if slot in p.moved or slot in hot or not _may_take(p, slot, name, other):
            continue
        if other in p.members[slot]:
            return slot
        if best is None:
            best = slot
    return best
