"""Generated worlds for episodic memory: entities, templated passages, multi-hop questions, conversations.

A **world** is a small knowledge graph :math:`G = (V, E)` with typed entities (people, places, organisations,
events) and typed relations (``lives_in``, ``works_at``, ``born_in``, ``spouse_of``, ``met``, ``attended``,
``founded_by``, ``located_in``, ``took_place_in``, ``organized_by``). It is written out as short templated
English **passages**, each carrying its ground-truth triples ``(subject, relation, object)`` (entity ids),
so a rule-based OpenIE stage (HippoRAG's offline indexing) can be checked exactly.

What makes retrieval hard here, on purpose:

- **aliases**: nicknames (``Bob`` for Robert), initials (``R. Moreno``), short forms (``Corvane`` for
  ``Corvane Systems``, ``CS``); passages use them with probability ``alias_rate`` (synonym edges matter);
- **hubs**: a fraction of cities and organisations is ``hub_weight`` times more likely to be chosen as a
  home, birthplace, employer or venue, so they touch many passages. Plain Personalized PageRank drifts into
  them; HippoRAG's node specificity :math:`s_i = 1/|P_i|` (``|P_i|`` = passages mentioning node ``i``)
  down-weights them;
- **facts that change**: moves and job changes with timestamps; ``World.value_at(subject, relation, t)``
  gives the value at day ``t``, ``World.current`` the latest; both the old and new passage exist;
- **multi-hop questions**: a path ``q --r1--> b --r2--> a`` (``--r3-->`` for 3 hops) over functional
  relations (one value each, the current one for changing facts), so the answer is unique. No passage
  mentions both the question entity ``q`` and the answer ``a``: one passage never suffices.

``make_conversations`` writes LoCoMo-style multi-session dialogues between two speakers whose lives
(home, job, pets, hobbies, trips, events) unfold across sessions, with QA items of five kinds: single-hop,
multi-hop, temporal, knowledge-update (the latest value wins) and adversarial (not mentioned / false
presupposition), each with gold evidence turn ids.

Times are integer days since 2000-01-01 (``date_of(t)`` turns one into a ``datetime.date``). Everything is
deterministic under ``seed``; no downloads (names come from built-in lists and syllables).
"""

from __future__ import annotations

import datetime as _dt
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from labkit.data import SeedLike, rng

__all__ = [
    "Entity",
    "Fact",
    "Passage",
    "Question",
    "Turn",
    "Session",
    "ConvQA",
    "Conversation",
    "World",
    "make_world",
    "make_conversations",
    "date_of",
    "format_date",
    "RELATIONS",
]

EPOCH = _dt.date(2000, 1, 1)
RELATIONS = (
    "lives_in",
    "works_at",
    "born_in",
    "spouse_of",
    "met",
    "attended",
    "founded_by",
    "located_in",
    "took_place_in",
    "organized_by",
)
CHANGING = ("lives_in", "works_at")  # relations whose value changes over time
FUNCTIONAL = ("lives_in", "works_at", "born_in", "spouse_of", "founded_by", "located_in", "took_place_in",
              "organized_by")  # one value per subject (at any time)


def date_of(t: int) -> _dt.date:
    """The calendar date of day ``t`` (days since 2000-01-01)."""
    return EPOCH + _dt.timedelta(days=int(t))


def format_date(t: int, style: str = "month") -> str:
    """``t`` as text: ``"month"`` -> ``"March 2021"``, ``"day"`` -> ``"12 March 2021"``, ``"year"`` -> ``"2021"``."""
    d = date_of(t)
    if style == "month":
        return f"{d.strftime('%B')} {d.year}"
    if style == "day":
        return f"{d.day} {d.strftime('%B')} {d.year}"
    if style == "year":
        return str(d.year)
    raise ValueError(f"style must be 'month', 'day' or 'year', got {style!r}")


def _day(year: int, month: int = 1, day: int = 1) -> int:
    return (_dt.date(year, month, day) - EPOCH).days


# ----------------------------------------------------------------------------------------------- name lists
_FIRST = {  # first name -> nickname ("" = none)
    "Robert": "Bob", "William": "Will", "Elizabeth": "Liz", "Katherine": "Kate", "Alexander": "Alex",
    "Margaret": "Maggie", "Thomas": "Tom", "Jennifer": "Jen", "Michael": "Mike", "Samantha": "Sam",
    "Benjamin": "Ben", "Victoria": "Vicky", "Daniel": "Dan", "Rebecca": "Becky", "Nicholas": "Nick",
    "Josephine": "Jo", "Matthew": "Matt", "Patricia": "Patty", "Jonathan": "Jon", "Theodora": "Teddy",
    "Anthony": "Tony", "Isabella": "Bella", "Frederick": "Fred", "Eleanor": "Ellie", "Gregory": "Greg",
    "Abigail": "Abby", "Christopher": "Chris", "Natalia": "Nat", "Leonard": "Leo", "Vanessa": "Nessa",
    "Amara": "", "Tobias": "Toby", "Ingrid": "", "Rafael": "Rafa", "Mei": "", "Kofi": "", "Yusuf": "",
    "Priya": "", "Hana": "", "Oskar": "", "Lucia": "Lu", "Dmitri": "Dima", "Soren": "", "Aiko": "",
    "Emeka": "", "Farah": "", "Ines": "", "Jonas": "", "Leila": "", "Mateo": "", "Nadia": "", "Omar": "",
    "Paloma": "", "Ravi": "", "Selma": "", "Tariq": "", "Ulla": "", "Vera": "", "Wen": "", "Zara": "",
}
_LAST = (
    "Moreno Okafor Lindqvist Haddad Kowalski Tanaka Brennan Ferreira Novak Achebe Castellano Dubois Eriksen "
    "Fontaine Gallagher Hoffmann Ibarra Jovanovic Kaplan Larsen Mendez Nakamura Oyelaran Petrov Quinlan "
    "Rasmussen Sandoval Takahashi Ulrich Valdez Whitaker Yilmaz Zielinski Abernathy Bauer Chandra Delgado "
    "Eastwood Fischer Grant Holloway Iversen Jensen Keller Lambert Marsh Nilsen Ortega Pellegrini Reyes "
    "Sato Thorne Underwood Varga Weber Young Ziegler Adler Brooks Calloway"
).split()
_SYL_A = "Val Kes Bri Cor Mar Sel Tor Ash Lin Dun Hal Bel Fen Gar Ost Rav Wil Elm Tam Quen Hol Bram Cal Nor".split()
_SYL_B = "mora tren dle vane ris wick ford haven mere stead bury ton field mouth dale crest wyn lock brook".split()
_CITY_PREFIX = ("", "", "", "Port ", "New ", "East ", "Lake ")
_ABBREV = {"Port": "Pt.", "New": "N.", "East": "E.", "Lake": "L."}
_REGION_FORM = ("{} County", "the {} Valley", "{} Province", "the {} Coast")
_ORG_SUFFIX = ("Systems", "Logistics", "Bank", "Foods", "Energy", "Labs", "Press", "Studios", "Health", "Motors")
_ORG_INDUSTRY = dict(zip(_ORG_SUFFIX, ("software", "shipping", "banking", "food", "energy", "research",
                                       "publishing", "film", "healthcare", "cars")))
_EVENT_KIND = ("Marathon", "Book Fair", "Jazz Festival", "Tech Summit", "Film Festival", "Science Fair",
               "Food Market", "Chess Open")
_OCCUPATION = ("nurse", "engineer", "teacher", "lawyer", "chef", "architect", "pilot", "journalist",
               "accountant", "pharmacist", "designer", "electrician")


# ----------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Entity:
    """One entity. ``id`` is ``"<kind>:<k>"``; ``aliases`` are other surface forms that denote it."""

    id: str
    name: str
    kind: str  # "person" | "place" | "org" | "event"
    aliases: tuple[str, ...] = ()
    attrs: dict = field(default_factory=dict, compare=False, hash=False)
    hub: bool = False

    @property
    def surface_forms(self) -> tuple[str, ...]:
        """Name then aliases."""
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class Fact:
    """``subject --relation--> object`` holding on days ``[start, end)``; ``end=None`` means still true."""

    subject: str
    relation: str
    object: str
    start: int
    end: int | None = None

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.subject, self.relation, self.object)


@dataclass(frozen=True)
class Passage:
    """A short text with its ground truth: ``entities`` (ids mentioned), ``mentions`` ((id, surface form)
    pairs as written), ``triples`` ((subject id, relation, object id)) and the day ``t`` it describes."""

    id: str
    text: str
    entities: tuple[str, ...]
    triples: tuple[tuple[str, str, str], ...]
    t: int
    mentions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Question:
    """A k-hop question. ``path`` = the k triples from ``entity`` to ``answer`` (in order of the hops);
    ``support`` = the gold passage ids, one per hop; ``answers`` = the answer's name and aliases."""

    id: str
    kind: str  # "1hop" | "2hop" | "3hop"
    text: str
    entity: str
    answer: str
    answers: tuple[str, ...]
    path: tuple[tuple[str, str, str], ...]
    support: tuple[str, ...]


# ----------------------------------------------------------------------------------------------- templates
# {s} subject surface, {o} object surface, {x} extra clause; several per relation so surface forms vary.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "lives_in": ("{s} lives in {o}.", "{s} has made a home in {o}.", "These days {s} lives in {o}.",
                 "{s} rents a flat in {o}."),
    "moved": ("In {d}, {s} moved to {o}.", "{s} relocated to {o} in {d}.",
              "After a move in {d}, {s} now lives in {o}."),
    "works_at": ("{s} works at {o}.", "{s} is employed by {o}.", "{s} has a job at {o}."),
    "job_change": ("In {d}, {s} started a new job at {o}.", "{s} joined {o} in {d}.",
                   "{s} switched employers in {d} and now works for {o}."),
    "born_in": ("{s} was born in {o}.", "{s} is a native of {o}.", "{s} grew up in {o}, where they were born."),
    "spouse_of": ("{s} is married to {o}.", "{s} and {o} are a married couple.", "{s} married {o} in {d}."),
    "met": ("{s} met {o} at {e}.", "At {e}, {s} was introduced to {o}."),
    "attended": ("{s} attended {o}.", "{s} was among the visitors of {o}.", "{s} went to {o} in {d}."),
    "founded_by": ("{s} was founded by {o}.", "{o} founded {s} in {d}.", "{s} was started by {o} in {d}."),
    "located_in:org": ("{s} is headquartered in {o}.", "{s} has its head office in {o}.", "{s} is based in {o}."),
    "located_in:place": ("{s} lies in {o}.", "{s} is a town in {o}.", "{s} is part of {o}."),
    "took_place_in": ("{s} took place in {o}.", "{s} was held in {o} in {d}.", "{o} hosted {s}."),
    "organized_by": ("{s} was organised by {o}.", "{o} organised {s}.", "{o} ran {s} in {d}."),
}
_PERSON_CLAUSE = ("{s}, {occ},", "{s}, who works as {occ},")


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_unit(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def _pick(g: np.random.Generator, seq):
    return seq[int(g.integers(len(seq)))]


# ----------------------------------------------------------------------------------------------- the world
@dataclass
class World:
    """Entities, time-stamped facts and the passages that state them. Build with ``make_world``."""

    seed: int
    entities: dict[str, Entity]
    facts: list[Fact]
    alias_rate: float = 0.3
    _passages: list[Passage] = field(default_factory=list, repr=False)
    _fact_passage: dict[int, str] = field(default_factory=dict, repr=False)
    _aliases: dict[str, str] | None = field(default=None, repr=False)

    # -- lookups ------------------------------------------------------------------------------------------
    def entity(self, entity_id: str) -> Entity:
        """The entity with this id (KeyError naming it otherwise)."""
        if entity_id not in self.entities:
            raise KeyError(f"unknown entity id {entity_id!r}")
        return self.entities[entity_id]

    def of_kind(self, kind: str) -> list[Entity]:
        """Entities of one kind ("person", "place", "org", "event"), in id order."""
        if kind not in ("person", "place", "org", "event"):
            raise ValueError(f"kind must be one of person/place/org/event, got {kind!r}")
        return [e for e in self.entities.values() if e.kind == kind]

    @property
    def hubs(self) -> list[Entity]:
        return [e for e in self.entities.values() if e.hub]

    def alias_table(self) -> dict[str, str]:
        """Lower-cased surface form (name or alias) -> entity id. Surface forms are unique in a world."""
        return {s.lower(): e.id for e in self.entities.values() for s in e.surface_forms}

    def resolve(self, surface: str) -> str | None:
        """The entity id a name or alias denotes (case-insensitive), or None."""
        if self._aliases is None:
            self._aliases = self.alias_table()
        return self._aliases.get(surface.strip().lower())

    def history(self, subject: str, relation: str) -> list[Fact]:
        """All facts ``subject --relation--> ?`` in time order (past ones have ``end`` set)."""
        return sorted((f for f in self.facts if f.subject == subject and f.relation == relation), key=lambda f: f.start)

    def value_at(self, subject: str, relation: str, t: int) -> str | None:
        """Object of a functional relation on day ``t`` (None if it did not hold then)."""
        for f in self.history(subject, relation):
            if f.start <= t and (f.end is None or t < f.end):
                return f.object
        return None

    def current(self, subject: str, relation: str) -> str | None:
        """Latest value of a functional relation (spouse_of is looked up in both directions)."""
        h = [f for f in self.history(subject, relation) if f.end is None]
        if h:
            return h[-1].object
        if relation == "spouse_of":
            for f in self.facts:
                if f.relation == "spouse_of" and f.object == subject:
                    return f.subject
        return None

    def _current_index(self) -> dict[tuple[str, str], int]:
        """(subject, relation) -> index of the latest current fact; spouse_of indexed both ways."""
        idx: dict[tuple[str, str], int] = {}
        for i, f in enumerate(self.facts):
            if f.end is not None:
                continue
            keys = [(f.subject, f.relation)] + ([(f.object, f.relation)] if f.relation == "spouse_of" else [])
            for k in keys:
                if k not in idx or f.start >= self.facts[idx[k]].start:
                    idx[k] = i
        return idx

    def _current_fact(self, subject: str, relation: str) -> int | None:
        """Index (in ``facts``) of the current fact ``subject --relation--> ?``, spouse_of both ways."""
        best = None
        for i, f in enumerate(self.facts):
            if f.relation != relation or f.end is not None:
                continue
            if f.subject == subject or (relation == "spouse_of" and f.object == subject):
                if best is None or f.start >= self.facts[best].start:
                    best = i
        return best

    # -- passages -----------------------------------------------------------------------------------------
    def passages(self) -> list[Passage]:
        """Every passage of the world (one per fact, a ``met`` passage also states two ``attended`` facts)."""
        return list(self._passages)

    def passage(self, passage_id: str) -> Passage:
        for p in self._passages:
            if p.id == passage_id:
                return p
        raise KeyError(f"unknown passage id {passage_id!r}")

    def passage_of_fact(self, fact_index: int) -> str:
        """Id of the passage that states ``facts[fact_index]``."""
        return self._fact_passage[fact_index]

    def distractor_passages(self, n: int, seed: SeedLike = 0) -> list[Passage]:
        """``n`` hard-negative passages about *new* entities that share surface forms and hubs with the world.

        New people share a last name (sometimes a first name) with a world person and live in, work at or
        were born in the world's (mostly hub) cities and organisations; new organisations reuse a world
        organisation's stem (``Corvane Logistics`` next to ``Corvane Systems``: the short alias collides).
        They add no triple whose subject is a world entity, so every world question keeps its answer.
        Ids are ``d00000``...; new entity ids start with ``x:``.
        """
        _check_int("n", n, 0)
        g = rng(seed)
        people = self.of_kind("person")
        cities = [e for e in self.of_kind("place") if e.attrs.get("type") == "city"]
        orgs = self.of_kind("org")
        hubs_c = [e for e in cities if e.hub] or cities
        hubs_o = [e for e in orgs if e.hub] or orgs
        taken = set(self.alias_table())
        out: list[Passage] = []
        k = 0
        while len(out) < n:
            if g.random() < 0.75:  # a namesake person
                ref = _pick(g, people)
                last = ref.attrs["last"]
                for _ in range(50):
                    first = _pick(g, list(_FIRST)) if g.random() < 0.8 else ref.attrs["first"]
                    if first == ref.attrs["first"]:
                        last = _pick(g, _LAST)
                    name = f"{first} {last}"
                    if name.lower() not in taken:
                        break
                taken.add(name.lower())
                sid = f"x:person:{k}"
                rel = _pick(g, ("lives_in", "works_at", "born_in", "lives_in", "works_at"))
                pool = (hubs_o if g.random() < 0.7 else orgs) if rel == "works_at" else (
                    hubs_c if g.random() < 0.7 else cities)
                obj = _pick(g, pool)
                t = _day(int(g.integers(2012, 2024)), int(g.integers(1, 13)))
                key = rel
                s_surface = name
                o_surface = self._surface(obj, g)
                text = _pick(g, _TEMPLATES[key]).format(s=s_surface, o=o_surface, d=format_date(t))
                out.append(Passage(f"d{len(out):05d}", text, (sid, obj.id), ((sid, rel, obj.id),), t,
                                   ((sid, s_surface), (obj.id, o_surface))))
            else:  # an organisation sharing a stem
                ref = _pick(g, orgs)
                stem = ref.attrs["stem"]
                suffix = _pick(g, [s for s in _ORG_SUFFIX if s != ref.attrs["suffix"]])
                name = f"{stem} {suffix}"
                sid = f"x:org:{k}"
                city = _pick(g, hubs_c if g.random() < 0.7 else cities)
                t = _day(int(g.integers(1990, 2020)))
                c_surface = self._surface(city, g)
                text = _pick(g, _TEMPLATES["located_in:org"]).format(s=name, o=c_surface)
                out.append(Passage(f"d{len(out):05d}", text, (sid, city.id), ((sid, "located_in", city.id),), t,
                                   ((sid, name), (city.id, c_surface))))
            k += 1
        return out

    def _surface(self, e: Entity, g: np.random.Generator) -> str:
        if e.aliases and g.random() < self.alias_rate:
            return _pick(g, e.aliases)
        return e.name

    # -- questions ----------------------------------------------------------------------------------------
    def questions(self, kind: str, n: int, seed: SeedLike = 0, max_start_passages: int | None = None,
                  context: bool = False) -> list[Question]:
        """Up to ``n`` distinct questions of ``kind`` in {"1hop", "2hop", "3hop"} (fewer if the world has fewer).

        Paths follow functional relations (the current value of changing ones), so each answer is unique.
        For 2 and 3 hops no passage mentions both the question entity and the answer.

        max_start_passages: keep only questions whose start entity is mentioned in at most this many passages
            (a *specific* entity, as the entities 2WikiMultiHopQA and MuSiQue ask about); None keeps all.
        context: name a second entity in the question, a current fact about the start entity that is off the path
            (a person's home city or employer, an organisation's city, an event's organiser or city), e.g.
            "In which city is the employer of Bob Moreno, who lives in Kesris, based?". It is often a hub, so a
            retriever must not follow it (HippoRAG's node specificity). Questions with no such fact, or whose context
            entity is the bridge or the answer, are dropped.
        The defaults give exactly the questions of earlier versions (same texts, same order).
        """
        if kind not in _QUESTION_PATHS:
            raise ValueError(f"kind must be one of {sorted(_QUESTION_PATHS)}, got {kind!r}")
        _check_int("n", n, 0)
        if max_start_passages is not None:
            _check_int("max_start_passages", max_start_passages, 1)
        if not isinstance(context, bool):
            raise ValueError(f"context must be a bool, got {context!r}")
        g = rng(seed)
        mentions: dict[str, set[str]] = defaultdict(set)  # entity -> passages mentioning it
        for p in self._passages:
            for e in p.entities:
                mentions[e].add(p.id)
        cands = []
        cur = self._current_index()
        for ti, (start_kind, rels, _) in enumerate(_QUESTION_PATHS[kind]):
            for e in self.entities.values():
                if e.kind != start_kind:
                    continue
                node, path, support = e.id, [], []
                for r in rels:
                    fi = cur.get((node, r))
                    if fi is None:
                        break
                    f = self.facts[fi]
                    nxt = f.object if f.subject == node else f.subject
                    path.append((node, r, nxt))
                    support.append(self._fact_passage[fi])
                    node = nxt
                else:
                    ans = node
                    if ans == e.id or len({p[0] for p in path} | {ans}) < len(path) + 1:
                        continue  # a cycle (e.g. founder of the company where p works is p)
                    if kind != "1hop" and mentions[e.id] & mentions[ans]:
                        continue
                    if max_start_passages is not None and len(mentions[e.id]) > max_start_passages:
                        continue
                    ctx = None
                    if context:
                        ctx = self._context_of(e, path, cur)
                        if ctx is None:
                            continue
                    cands.append((ti, e.id, tuple(path), tuple(support), ans) + ((ctx,) if context else ()))
        order = g.permutation(len(cands))
        out = []
        for j in order[:n]:
            ti, q, path, support, ans = cands[int(j)][:5]
            templates = _QUESTION_PATHS[kind][ti][2]
            qe = self.entities[q]
            surface = _pick(g, qe.aliases) if qe.aliases and g.random() < self.alias_rate * 0.5 else qe.name
            if context:
                clause, cid = cands[int(j)][5]
                surface = f"{surface}, {clause} {self.entities[cid].name},"
            text = _pick(g, templates).format(q=surface)
            if context:
                text = text.replace(",?", "?").replace(",'s", "'s")
            a = self.entities[ans]
            out.append(Question(f"{kind}-{len(out):04d}", kind, text, q, ans, a.surface_forms, path, support))
        return out

    def _context_of(self, e: Entity, path: list[tuple[str, str, str]],
                    cur: dict[tuple[str, str], int]) -> tuple[str, str] | None:
        """(clause, entity id) of a current fact about ``e`` that is off ``path`` and names neither a path entity
        nor the answer; None if there is none."""
        options = {"person": (("lives_in", "who lives in"), ("works_at", "who works at")),
                   "org": (("located_in", "based in"), ("founded_by", "founded by")),
                   "event": (("organized_by", "organised by"), ("took_place_in", "held in"))}.get(e.kind, ())
        on_path = {x for h, _, t in path for x in (h, t)}
        for rel, clause in options:
            if rel == path[0][1]:
                continue
            fi = cur.get((e.id, rel))
            if fi is None:
                continue
            f = self.facts[fi]
            obj = f.object if f.subject == e.id else f.subject
            if obj not in on_path:
                return clause, obj
        return None

    # -- summary ------------------------------------------------------------------------------------------
    def summary(self, show: bool = True) -> dict[str, int]:
        """Counts of entities by kind, hubs, aliases, facts (changing ones), passages. Printed if ``show``."""
        c: dict[str, int] = {k: len(self.of_kind(k)) for k in ("person", "place", "org", "event")}
        c["hubs"] = len(self.hubs)
        c["aliases"] = sum(len(e.aliases) for e in self.entities.values())
        c["facts"] = len(self.facts)
        c["past_facts"] = sum(f.end is not None for f in self.facts)
        c["passages"] = len(self._passages)
        c["passages_with_alias"] = sum(
            any(s != self.entities[i].name for i, s in p.mentions) for p in self._passages)
        if show:
            print(f"world(seed={self.seed}): " + ", ".join(f"{k}={v}" for k, v in c.items()))
        return c


# kind -> list of (start entity kind, relations along the path, phrasings with {q})
_QUESTION_PATHS: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]] = {
    "1hop": [
        ("person", ("lives_in",), ("Where does {q} live?", "In which city does {q} live now?")),
        ("person", ("works_at",), ("Where does {q} work?", "Which organisation employs {q}?")),
        ("person", ("born_in",), ("Where was {q} born?", "What is the birthplace of {q}?")),
        ("person", ("spouse_of",), ("Who is {q} married to?", "Who is the spouse of {q}?")),
        ("org", ("founded_by",), ("Who founded {q}?", "Who is the founder of {q}?")),
        ("org", ("located_in",), ("Where is {q} headquartered?", "In which city is {q} based?")),
        ("event", ("took_place_in",), ("Where did {q} take place?",)),
        ("event", ("organized_by",), ("Who organised {q}?",)),
    ],
    "2hop": [
        ("org", ("founded_by", "lives_in"), ("Where does the founder of {q} live?",
                                             "In which city does the person who founded {q} live?")),
        ("person", ("works_at", "located_in"), ("In which city is the employer of {q} based?",
                                                "Where is the company that {q} works for headquartered?")),
        ("person", ("spouse_of", "born_in"), ("Where was the spouse of {q} born?",
                                              "What is the birthplace of the person married to {q}?")),
        ("person", ("works_at", "founded_by"), ("Who founded the organisation where {q} works?",)),
        ("event", ("organized_by", "founded_by"), ("Who founded the organiser of {q}?",)),
        ("person", ("born_in", "located_in"), ("In which region was {q} born?",)),
        ("event", ("took_place_in", "located_in"), ("In which region did {q} take place?",)),
    ],
    "3hop": [
        ("org", ("founded_by", "lives_in", "located_in"), ("In which region does the founder of {q} live?",)),
        ("person", ("spouse_of", "works_at", "located_in"), ("Where is the employer of {q}'s spouse based?",
                                                             "In which city does the spouse of {q} work?")),
        ("person", ("works_at", "founded_by", "born_in"), ("Where was the founder of {q}'s employer born?",)),
        ("event", ("organized_by", "founded_by", "lives_in"),
         ("Where does the founder of the organiser of {q} live?",)),
        ("person", ("works_at", "located_in", "located_in"), ("In which region is the employer of {q} based?",)),
    ],
}


def _names(g: np.random.Generator, n_people: int, n_cities: int, n_regions: int, n_orgs: int, n_events: int):
    """Unique names: people from the first/last lists (syllable surnames beyond them), places/orgs from syllables."""
    firsts = list(_FIRST)
    used: set[str] = set()
    people = []
    while len(people) < n_people:
        first = _pick(g, firsts)
        last = _pick(g, _LAST) if len(used) < 0.5 * len(firsts) * len(_LAST) else (
            _pick(g, _SYL_A) + _pick(g, _SYL_B))
        if f"{first} {last}" in used:
            continue
        used.add(f"{first} {last}")
        people.append((first, last))

    stems: list[str] = []
    stem_set: set[str] = set()

    def stem() -> str:
        while True:
            parts = _pick(g, _SYL_A) + _pick(g, _SYL_B)
            if len(stem_set) > 0.8 * len(_SYL_A) * len(_SYL_B):  # many stems: add a third syllable
                parts = _pick(g, _SYL_A) + _pick(g, _SYL_B).lower() + _pick(g, _SYL_B)
            if parts not in stem_set:
                stem_set.add(parts)
                stems.append(parts)
                return parts

    cities = [(_pick(g, _CITY_PREFIX), stem()) for _ in range(n_cities)]
    regions = [_pick(g, _REGION_FORM).format(stem()) for _ in range(n_regions)]
    orgs = [(stem(), _pick(g, _ORG_SUFFIX)) for _ in range(n_orgs)]
    return people, cities, regions, orgs


def make_world(
    seed: SeedLike = 0,
    n_people: int = 120,
    n_places: int = 30,
    n_orgs: int = 30,
    n_events: int = 20,
    hub_fraction: float = 0.1,
    hub_weight: float = 12.0,
    change_rate: float = 0.4,
    spouse_rate: float = 0.4,
    alias_rate: float = 0.3,
    n_hubs: int | None = None,
) -> World:
    """A seeded world and its passages.

    Args:
        seed: int seed or numpy Generator.
        n_people, n_places, n_orgs, n_events: sizes; places are split into regions (``max(1, n_places // 5)``)
            and cities (the rest, at least 1), so ``n_places >= 2``.
        hub_fraction: fraction of cities + organisations that are hubs (in [0, 1]); ``n_hubs`` overrides it.
        hub_weight: a hub is this many times likelier than another to be picked as home/birthplace/employer/venue.
        change_rate: probability that a person moves (and, independently, changes job) at least once.
        spouse_rate: fraction of people in a married couple.
        alias_rate: probability a passage (or question) writes an entity by one of its aliases.
    """
    _check_int("n_people", n_people, 2)
    _check_int("n_places", n_places, 2)
    _check_int("n_orgs", n_orgs, 1)
    _check_int("n_events", n_events, 0)
    _check_unit("hub_fraction", hub_fraction)
    _check_unit("change_rate", change_rate)
    _check_unit("spouse_rate", spouse_rate)
    _check_unit("alias_rate", alias_rate)
    if isinstance(hub_weight, bool) or not isinstance(hub_weight, (int, float)) or hub_weight < 1.0:
        raise ValueError(f"hub_weight must be a number >= 1, got {hub_weight!r}")
    n_regions = max(1, n_places // 5)
    n_cities = n_places - n_regions
    if n_hubs is None:
        n_hubs = int(round(hub_fraction * (n_cities + n_orgs)))
    _check_int("n_hubs", n_hubs, 0)
    if n_hubs > n_cities + n_orgs:
        raise ValueError(f"n_hubs must be <= the number of cities + organisations ({n_cities + n_orgs}), got {n_hubs}")
    seed_int = int(seed) if not isinstance(seed, np.random.Generator) else -1
    g = rng(seed)
    people_n, cities_n, regions_n, orgs_n = _names(g, n_people, n_cities, n_regions, n_orgs, n_events)

    ents: dict[str, Entity] = {}
    taken: set[str] = set()

    def add(eid: str, name: str, kind: str, aliases: list[str], attrs: dict, hub: bool = False) -> None:
        taken.add(name.lower())
        keep = []
        for a in aliases:  # aliases stay unique in the world: drop any that would be ambiguous
            if a and a.lower() not in taken and a.lower() not in {x.lower() for x in keep}:
                keep.append(a)
        taken.update(a.lower() for a in keep)
        ents[eid] = Entity(eid, name, kind, tuple(keep), attrs, hub)

    # Names first (so that an alias never shadows a later canonical name), then aliases.
    all_names = {f"{f} {l}".lower() for f, l in people_n} | {(p + s).lower() for p, s in cities_n}
    all_names |= {r.lower() for r in regions_n} | {f"{s} {x}".lower() for s, x in orgs_n}
    taken |= all_names
    # hubs among cities + orgs
    hub_idx = set(g.choice(n_cities + n_orgs, size=n_hubs, replace=False).tolist()) if n_hubs else set()
    for i, (pre, st) in enumerate(cities_n):
        name = pre + st
        aliases = [st, _ABBREV[pre.strip()] + " " + st] if pre else [f"{st} City"]
        add(f"place:{i}", name, "place", aliases, {"type": "city", "population": int(g.integers(5, 900)) * 1000},
            hub=i in hub_idx)
    for j, r in enumerate(regions_n):
        add(f"place:{n_cities + j}", r, "place", [r.replace("the ", "").split()[0] + " region"], {"type": "region"})
    for k, (st, suf) in enumerate(orgs_n):
        name = f"{st} {suf}"
        add(f"org:{k}", name, "org", [st, st[0] + suf[0], f"{st} {suf[:3]}."],
            {"stem": st, "suffix": suf, "industry": _ORG_INDUSTRY[suf]}, hub=(n_cities + k) in hub_idx)
    for i, (first, last) in enumerate(people_n):
        nick = _FIRST[first]
        aliases = [f"{first[0]}. {last}"] + ([f"{nick} {last}"] if nick else [])
        add(f"person:{i}", f"{first} {last}", "person", aliases,
            {"first": first, "last": last, "occupation": _pick(g, _OCCUPATION),
             "birth_year": int(g.integers(1950, 1996))})

    cities = [f"place:{i}" for i in range(n_cities)]
    regions = [f"place:{n_cities + j}" for j in range(n_regions)]
    orgs = [f"org:{k}" for k in range(n_orgs)]
    people = [f"person:{i}" for i in range(n_people)]

    def weights(ids: list[str]) -> np.ndarray:
        w = np.array([hub_weight if ents[i].hub else 1.0 for i in ids])
        return w / w.sum()

    wc, wo = weights(cities), weights(orgs)

    def draw(ids: list[str], w: np.ndarray, exclude: str | None = None) -> str:
        for _ in range(100):
            x = ids[int(g.choice(len(ids), p=w))]
            if x != exclude:
                return x
        return x

    facts: list[Fact] = []
    specs: list[tuple[str, list[int], dict]] = []  # (template key, fact indices, extra) -> one passage each

    def fact(s: str, r: str, o: str, start: int, end: int | None = None) -> int:
        facts.append(Fact(s, r, o, start, end))
        return len(facts) - 1

    for c in cities:  # geography
        specs.append(("located_in:place", [fact(c, "located_in", _pick(g, regions), _day(1900))], {}))
    for o in orgs:
        t0 = _day(int(g.integers(1995, 2012)), int(g.integers(1, 13)))
        specs.append(("located_in:org", [fact(o, "located_in", draw(cities, wc), t0)], {}))
    founders = g.choice(n_people, size=min(n_orgs, n_people), replace=False).tolist()
    for k, o in enumerate(orgs):
        p = people[founders[k]] if k < len(founders) else people[int(g.integers(n_people))]
        specs.append(("founded_by", [fact(o, "founded_by", p, _day(int(g.integers(1995, 2012))))], {}))
    for p in people:
        by = ents[p].attrs["birth_year"]
        specs.append(("born_in", [fact(p, "born_in", draw(cities, wc), _day(by, int(g.integers(1, 13))))], {}))
        for rel, ids, w, key0, key1 in (("lives_in", cities, wc, "lives_in", "moved"),
                                        ("works_at", orgs, wo, "works_at", "job_change")):
            t = _day(int(g.integers(2010, 2015)), int(g.integers(1, 13)))
            n_changes = 0
            if g.random() < change_rate:
                n_changes = 1 + int(g.random() < 0.3)
            times = [t] + sorted(_day(int(y), int(m)) for y, m in
                                 zip(g.integers(2016, 2025, n_changes), g.integers(1, 13, n_changes)))
            times = sorted(set(times))
            prev = None
            for i, ti in enumerate(times):
                obj = draw(ids, w, exclude=prev) if len(ids) > 1 else ids[0]
                end = times[i + 1] if i + 1 < len(times) else None
                specs.append((key0 if i == 0 else key1, [fact(p, rel, obj, ti, end)], {}))
                prev = obj
    order = g.permutation(n_people).tolist()
    n_couples = int(spouse_rate * n_people) // 2
    for c in range(n_couples):
        a, b = people[order[2 * c]], people[order[2 * c + 1]]
        specs.append(("spouse_of", [fact(a, "spouse_of", b, _day(int(g.integers(2000, 2020)), 6))], {}))
    used_ev: set[str] = set()
    for k in range(n_events):
        kind = _pick(g, _EVENT_KIND)
        city = draw(cities, wc)
        year = int(g.integers(2012, 2025))
        name = f"{year} {ents[city].name} {kind}"
        if name.lower() in used_ev or name.lower() in taken:
            name = f"{year} {ents[city].name} {kind} ({k})"
        used_ev.add(name.lower())
        eid = f"event:{k}"
        add(eid, name, "event", [f"the {ents[city].name} {kind} of {year}"], {"year": year, "kind": kind})
        t = _day(year, int(g.integers(1, 13)), int(g.integers(1, 28)))
        specs.append(("took_place_in", [fact(eid, "took_place_in", city, t)], {}))
        specs.append(("organized_by", [fact(eid, "organized_by", draw(orgs, wo), t)], {}))
        guests = g.choice(n_people, size=min(n_people, int(g.integers(2, 7))), replace=False).tolist()
        if len(guests) >= 2:  # two of them met there
            a, b = people[guests[0]], people[guests[1]]
            specs.append(("met", [fact(a, "met", b, t), fact(a, "attended", eid, t), fact(b, "attended", eid, t)],
                          {"e": eid}))
        for x in guests[2:]:
            specs.append(("attended", [fact(people[x], "attended", eid, t)], {}))

    world = World(seed_int, ents, facts, alias_rate)
    # Write the passages (in a shuffled order so passage ids say nothing about the relation).
    perm = g.permutation(len(specs)).tolist()
    for n_p, si in enumerate(perm):
        key, fis, extra = specs[si]
        f0 = facts[fis[0]]
        s_e, o_e = ents[f0.subject], ents[f0.object]
        s_surf, o_surf = world._surface(s_e, g), world._surface(o_e, g)
        mentions = [(s_e.id, s_surf), (o_e.id, o_surf)]
        text = _pick(g, _TEMPLATES[key])
        if s_e.kind == "person" and text.startswith("{s} ") and g.random() < 0.3:  # an attribute clause
            occ = s_e.attrs["occupation"]
            occ = ("an " if occ[0] in "aeiou" else "a ") + occ
            text = _pick(g, _PERSON_CLAUSE).format(s="{s}", occ=occ) + text[3:]
        kw = {"s": s_surf, "o": o_surf, "d": format_date(f0.start)}
        if "e" in extra:
            ev = ents[extra["e"]]
            kw["e"] = world._surface(ev, g)
            mentions.append((ev.id, kw["e"]))
        text = text.format(**kw)
        text = text[0].upper() + text[1:]
        mentions = [(i, m if m in text else m[0].upper() + m[1:]) for i, m in mentions]  # as written
        pid = f"p{n_p:05d}"
        world._passages.append(Passage(pid, text, tuple(dict.fromkeys(m[0] for m in mentions)),
                                       tuple(facts[i].triple for i in fis), f0.start, tuple(mentions)))
        for i in fis:
            world._fact_passage[i] = pid
    return world


# ----------------------------------------------------------------------------------------------- conversations
@dataclass(frozen=True)
class Turn:
    """One utterance. ``facts`` are the triples it reveals (speaker id, relation, object id or literal)."""

    id: str
    session: int
    speaker: str
    text: str
    facts: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class Session:
    """One conversation session on day ``t``."""

    index: int
    t: int
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class ConvQA:
    """A question about a conversation. ``answers`` lists accepted strings (the first is canonical);
    ``evidence`` = gold turn ids (empty for "not mentioned")."""

    id: str
    kind: str  # "single-hop" | "multi-hop" | "temporal" | "knowledge-update" | "adversarial"
    question: str
    answers: tuple[str, ...]
    evidence: tuple[str, ...]


@dataclass
class Conversation:
    """Sessions between two speakers (``speakers`` = their names) and QA items about them."""

    speakers: tuple[str, str]
    sessions: list[Session]
    qa: list[ConvQA]
    timeline: list[tuple[int, str, str, str, str]]  # (day, speaker, relation, object, turn id)

    def turns(self) -> list[Turn]:
        return [t for s in self.sessions for t in s.turns]

    def turn(self, turn_id: str) -> Turn:
        for t in self.turns():
            if t.id == turn_id:
                return t
        raise KeyError(f"unknown turn id {turn_id!r}")

    def latest(self, speaker: str, relation: str) -> str | None:
        """The last revealed value of ``relation`` for ``speaker`` (knowledge-update ground truth)."""
        vals = [o for _, s, r, o, _ in self.timeline if s == speaker and r == relation]
        return vals[-1] if vals else None

    def summary(self, show: bool = True) -> dict[str, int]:
        c: dict[str, int] = {"sessions": len(self.sessions), "turns": len(self.turns()),
                             "fact_turns": sum(bool(t.facts) for t in self.turns()), "qa": len(self.qa)}
        for q in self.qa:
            c["qa_" + q.kind] = c.get("qa_" + q.kind, 0) + 1
        if show:
            print("conversation: " + ", ".join(f"{k}={v}" for k, v in c.items()))
        return c


_CHAT = ("Hey, how have you been?", "Good to hear from you!", "Haha, same here.", "That sounds lovely.",
         "Oh really? Tell me more.", "I have been so busy lately.", "The weather has been awful this week.",
         "Did you watch the match on Sunday?", "I need a holiday, honestly.", "Anyway, how is your family?",
         "That's wonderful news!", "I know what you mean.", "Let's catch up again soon.", "Sorry, I was half asleep.")
_HOBBIES = ("pottery", "rock climbing", "the cello", "birdwatching", "salsa dancing", "chess", "baking bread",
            "kayaking", "watercolour painting", "running")
_PETS = (("dog", ("Max", "Biscuit", "Luna", "Pepper")), ("cat", ("Miso", "Olive", "Tiger", "Smudge")),
         ("parrot", ("Kiwi", "Rio")), ("rabbit", ("Clover", "Hazel")))


_REVEAL_P = np.array([0.25, 0.2, 0.3, 0.1, 0.15])


def make_conversations(world: World, n_sessions: int = 10, turns_per_session: int = 12, seed: SeedLike = 0,
                       n_questions: int = 40) -> Conversation:
    """LoCoMo-style dialogue between two new speakers living in ``world`` (its cities, organisations, events).

    Session 0 states each speaker's home and job; later sessions reveal moves ("I moved to Y last month"),
    job changes, trips, pets, hobbies and events, mixed with chit-chat. Sessions are 7-60 days apart.
    QA items (up to ``n_questions``, balanced over the five kinds) carry gold evidence turn ids.
    """
    _check_int("n_sessions", n_sessions, 2)
    _check_int("turns_per_session", turns_per_session, 4)
    _check_int("n_questions", n_questions, 0)
    g = rng(seed)
    cities = [e for e in world.of_kind("place") if e.attrs.get("type") == "city"]
    orgs = world.of_kind("org")
    events = world.of_kind("event")
    if len(cities) < 3:
        raise ValueError(f"world must have at least 3 cities for conversations, got {len(cities)}")
    taken = set(world.alias_table())
    names = []
    while len(names) < 2:
        nm = f"{_pick(g, list(_FIRST))} {_pick(g, _LAST)}"
        if nm.lower() not in taken and nm not in names:
            names.append(nm)
    A, B = names
    t = _day(2022, int(g.integers(1, 13)), int(g.integers(1, 28)))
    state = {sp: {"lives_in": _pick(g, cities).name, "works_at": _pick(g, orgs).name} for sp in names}
    pets: dict[str, tuple[str, str]] = {}
    hobbies: dict[str, str] = {}
    timeline: list[tuple[int, str, str, str, str]] = []
    visited: dict[str, set[str]] = {sp: set() for sp in names}
    sessions: list[Session] = []
    ev_shared = _pick(g, events).name if events else None
    ev_session = int(g.integers(1, n_sessions)) if ev_shared else -1
    for si in range(n_sessions):
        if si:
            t += int(g.integers(7, 61))
        reveal: list[tuple[str, str, str, str, int]] = []  # (speaker, relation, object, text, day)
        if si == 0:
            for sp in names:
                reveal.append((sp, "lives_in", state[sp]["lives_in"], f"I live in {state[sp]['lives_in']}.", t))
                reveal.append((sp, "works_at", state[sp]["works_at"],
                               f"I work at {state[sp]['works_at']} these days.", t))
        else:
            for sp in names:
                kinds = ("move", "job", "trip", "pet", "hobby")
                for wi in g.choice(len(kinds), size=int(g.integers(1, 3)), replace=False, p=_REVEAL_P).tolist():
                    what = kinds[wi]
                    if what == "move":
                        new = _pick(g, [c.name for c in cities if c.name != state[sp]["lives_in"]])
                        state[sp]["lives_in"] = new
                        reveal.append((sp, "lives_in", new, _pick(g, (
                            f"Big news: I moved to {new} last month!", f"We finally moved to {new} last month.")),
                            t - 30))
                    elif what == "job":
                        others = [o.name for o in orgs if o.name != state[sp]["works_at"]]
                        new = _pick(g, others or [o.name for o in orgs])
                        state[sp]["works_at"] = new
                        reveal.append((sp, "works_at", new, f"I quit my old job and started at {new} last week.",
                                       t - 7))
                    elif what == "trip":
                        c = _pick(g, cities).name
                        visited[sp].add(c)
                        reveal.append((sp, "visited", c, f"Last weekend I took a trip to {c}.", t - 3))
                    elif what == "pet" and sp not in pets:
                        species, pnames = _pick(g, _PETS)
                        pets[sp] = (species, _pick(g, pnames))
                        reveal.append((sp, "has_pet", f"{species} {pets[sp][1]}",
                                       f"We adopted a {species} named {pets[sp][1]}!", t))
                    elif what == "hobby" and sp not in hobbies:
                        hobbies[sp] = _pick(g, _HOBBIES)
                        reveal.append((sp, "hobby", hobbies[sp], f"I've started learning {hobbies[sp]}.", t))
            if si == ev_session:  # an event of this year (or the nearest year): "recently" must be true
                year = date_of(t).year
                gap = min(abs(e.attrs["year"] - year) for e in events)
                ev_shared = _pick(g, [e.name for e in events if abs(e.attrs["year"] - year) == gap])
                for sp in names:
                    reveal.append((sp, "attended", ev_shared, f"I was at the {ev_shared} too!" if sp == B else
                                   f"I went to the {ev_shared} recently.", t - 5))
        # lay the reveals into turns: alternate speakers, chit-chat elsewhere (facts in speaker order)
        n_t = max(turns_per_session, 2 * len(reveal) + 2)
        slots = {A: [], B: []}
        for r in reveal:
            slots[r[0]].append(r)
        turns = []
        for ti in range(n_t):
            sp = names[ti % 2]
            tid = f"s{si}t{ti}"
            left = (n_t - ti + 1) // 2  # turns this speaker still has in the session (including this one)
            if slots[sp] and (g.random() < 0.6 or len(slots[sp]) >= left):
                r = slots[sp].pop(0)
                turns.append(Turn(tid, si, sp, r[3], ((sp, r[1], r[2]),)))
                timeline.append((r[4], sp, r[1], r[2], tid))
            else:
                turns.append(Turn(tid, si, sp, _pick(g, _CHAT)))
        sessions.append(Session(si, t, tuple(turns)))
    conv = Conversation((A, B), sessions, [], timeline)
    conv.qa = _conv_questions(conv, world, g, n_questions)
    return conv


def _conv_questions(conv: Conversation, world: World, g: np.random.Generator, n: int) -> list[ConvQA]:
    by: dict[str, list] = defaultdict(list)
    tl = conv.timeline
    names = conv.speakers
    for sp in names:
        other = names[1] if sp == names[0] else names[0]
        mine = [x for x in tl if x[1] == sp]
        count = defaultdict(int)  # (relation, object) -> times revealed; "when did..." needs a unique one
        months = defaultdict(int)  # (relation, month) -> reveals; "which city in <month>" needs a unique one
        for x in mine:
            count[x[2], x[3]] += 1
            months[x[2], format_date(x[0])] += 1
        for day, _, rel, obj, tid in mine:
            if rel == "has_pet":
                species, pname = obj.split(" ", 1)
                by["single-hop"].append((f"What is the name of {sp}'s {species}?", (pname,), (tid,)))
            elif rel == "hobby":
                by["single-hop"].append((f"What has {sp} started learning?", (obj,), (tid,)))
            elif rel == "visited":
                if months[rel, format_date(day)] == 1:
                    by["single-hop"].append((f"Which city did {sp} visit on a weekend trip in {format_date(day)}?",
                                             (obj,), (tid,)))
                if count[rel, obj] == 1:
                    by["temporal"].append((f"When did {sp} take a trip to {obj}?", (format_date(day),), (tid,)))
            elif rel in ("lives_in", "works_at") and tid.startswith("s0"):
                verb = "live" if rel == "lives_in" else "work"
                by["single-hop"].append((f"Where did {sp} {verb} when the conversations began?", (obj,), (tid,)))
            if rel in ("lives_in", "works_at") and not tid.startswith("s0") and count[rel, obj] == 1:
                what = f"move to {obj}" if rel == "lives_in" else f"start working at {obj}"
                by["temporal"].append((f"When did {sp} {what}?", (format_date(day),), (tid,)))
            # multi-hop: where the speaker lived when the new job started
            if rel == "works_at" and not tid.startswith("s0") and count[rel, obj] == 1:
                homes = [x for x in mine if x[2] == "lives_in" and x[0] <= day]
                if homes:
                    h = homes[-1]
                    by["multi-hop"].append((f"Where was {sp} living when they started working at {obj}?",
                                            (h[3],), (h[4], tid)))
        for rel, q in (("lives_in", f"Where does {sp} live now?"), ("works_at", f"Where does {sp} work now?")):
            vals = [x for x in mine if x[2] == rel]
            if len(vals) > 1:
                by["knowledge-update"].append((q, (vals[-1][3],), (vals[0][4], vals[-1][4])))
                verb = "live in" if rel == "lives_in" else "work at"
                # a "still ...?" question about every superseded value, in a fixed order
                for old in sorted({x[3] for x in vals[:-1]} - {vals[-1][3]}):
                    first_old = next(x for x in vals if x[3] == old)
                    by["knowledge-update"].append((f"Does {sp} still {verb} {old}?", (f"no, {vals[-1][3]}",
                                                   vals[-1][3], "no"), (first_old[4], vals[-1][4])))
        pet = [x[3].split(" ", 1)[0] for x in mine if x[2] == "has_pet"]
        species = _pick(g, [s for s, _ in _PETS if s not in pet])
        by["adversarial"].append((f"What is the name of {sp}'s {species}?", ("not mentioned",), ()))
        worked = {x[3] for x in mine if x[2] == "works_at"}
        never_org = [o.name for o in world.of_kind("org") if o.name not in worked]
        if never_org:
            o = _pick(g, never_org)
            by["adversarial"].append((f"Why did {sp} leave {o}?", ("not mentioned", f"{sp} never worked at {o}"), ()))
        went = {x[3] for x in mine if x[2] == "attended"}
        never_ev = [e.name for e in world.of_kind("event") if e.name not in went]
        if never_ev:
            e = _pick(g, never_ev)
            by["adversarial"].append((f"What did {sp} think of the {e}?", ("not mentioned",), ()))
        lived = {x[3] for x in mine if x[2] == "lives_in"}
        never = [c.name for c in world.of_kind("place") if c.attrs.get("type") == "city" and c.name not in lived]
        if never:
            c = _pick(g, never)
            by["adversarial"].append((f"Why did {sp} move to {c}?", ("not mentioned", f"{sp} never moved to {c}"), ()))
        if not any(x[2] == "hobby" for x in mine):
            by["adversarial"].append((f"How long has {sp} been learning {_pick(g, _HOBBIES)}?", ("not mentioned",), ()))
        # multi-hop across speakers: an event both attended
        ev = [x for x in mine if x[2] == "attended"]
        ev_o = [x for x in tl if x[1] == other and x[2] == "attended"]
        if ev and ev_o and sp == names[0]:
            by["multi-hop"].append((f"Which event did both {names[0]} and {names[1]} attend?", (ev[0][3],),
                                    (ev[0][4], ev_o[0][4])))
        # temporal order between two of the speaker's dated reveals in different sessions
        dated = [x for x in mine if not x[4].startswith("s0") and x[2] in ("lives_in", "works_at", "visited")]
        for a, b in zip(dated, dated[1:]):
            if a[0] != b[0] and _phrase(a) != _phrase(b):
                da = _phrase(a)
                db = _phrase(b)
                first = da if a[0] < b[0] else db
                opts = (da, db) if g.random() < 0.5 else (db, da)
                by["temporal"].append((f"What happened first: {sp} {opts[0]} or {sp} {opts[1]}?", (first,),
                                       (a[4], b[4])))
    kinds = ("single-hop", "multi-hop", "temporal", "knowledge-update", "adversarial")
    for k in kinds:
        idx = g.permutation(len(by[k])).tolist()
        by[k] = [by[k][i] for i in idx]
    out: list[ConvQA] = []
    i = 0
    while len(out) < n and any(by[k] for k in kinds):
        k = kinds[i % len(kinds)]
        if by[k]:
            q, ans, ev = by[k].pop(0)
            out.append(ConvQA(f"cq{len(out):04d}", k, q, ans, ev))
        i += 1
    return out


def _phrase(x: tuple[int, str, str, str, str]) -> str:
    rel, obj = x[2], x[3]
    return {"lives_in": f"moving to {obj}", "works_at": f"starting at {obj}", "visited": f"visiting {obj}"}[rel]
