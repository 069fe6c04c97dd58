"""Synthetic recommendation logs with learnable structure, at any size.

Items fall into topic clusters shared by every domain (a cooking video, a cooking ad, a cooking
product); each user has a sparse latent interest over topics (Dirichlet); histories follow a sticky
Markov walk over the user's topics; behaviour labels depend on how much the user likes the item's topic
(likes/long views up, dislikes down); searches use a topic keyword and return items of that topic.
Item codes mirror the structure (c1 = topic, c2 = keyword within the topic, c3 = running index), so a
model can learn that items sharing a prefix are alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megarec.common.errors import ConfigError
from megarec.rawdata.schema import DropReport, Interaction, Item, RecLog, Search, User

TOPICS: dict[str, tuple[str, ...]] = {
    "cooking": ("pasta", "baking", "street food", "knife skills", "spicy recipes"),
    "travel": ("mountains", "island hopping", "city walks", "road trips", "camping"),
    "fitness": ("yoga", "weight lifting", "running", "stretching", "home workouts"),
    "gaming": ("speedruns", "strategy games", "retro consoles", "esports", "indie games"),
    "music": ("guitar covers", "jazz", "piano lessons", "live concerts", "hip hop"),
    "pets": ("puppies", "cats", "aquariums", "parrots", "dog training"),
    "fashion": ("streetwear", "vintage style", "sneakers", "makeup", "jewelry"),
    "finance": ("investing", "budgeting", "crypto", "real estate", "saving tips"),
    "science": ("space", "chemistry demos", "robots", "dinosaurs", "physics puzzles"),
    "comedy": ("sketches", "pranks", "stand-up", "parodies", "bloopers"),
    "cars": ("electric cars", "car repair", "racing", "off-road", "classic cars"),
    "gardening": ("houseplants", "vegetables", "bonsai", "flowers", "composting"),
    "photography": ("portraits", "landscapes", "drones", "film cameras", "photo editing"),
    "history": ("ancient rome", "world wars", "castles", "archaeology", "inventions"),
    "dance": ("ballet", "breakdance", "salsa", "k-pop dance", "tap dance"),
    "crafts": ("knitting", "woodworking", "pottery", "origami", "painting"),
}
DOMAIN_NOUNS = {"video": "short video", "ad": "advert", "product": "product"}
ADJECTIVES = (
    "quick",
    "relaxing",
    "surprising",
    "beginner-friendly",
    "expert",
    "funny",
    "cozy",
    "epic",
    "minimal",
    "colourful",
    "budget",
    "premium",
)
DOMAIN_LABELS = {
    "video": ("like", "follow", "comment", "long_view"),
    "ad": ("click", "like"),
    "product": ("purchase", "like", "comment"),
}


@dataclass
class SyntheticConfig:
    num_users: int = 200
    num_items: int = 600
    domains: tuple[str, ...] = ("video", "ad", "product")
    num_topics: int = 12
    min_history: int = 8
    max_history: int = 30
    interest_concentration: float = 0.3
    stickiness: float = 0.6
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= self.num_topics <= len(TOPICS):
            raise ConfigError(f"num_topics must be in 1..{len(TOPICS)}")
        if self.num_items < len(self.domains) * self.num_topics:
            raise ConfigError(
                f"num_items={self.num_items} is too small for {len(self.domains)} domains x {self.num_topics} topics"
            )
        if self.num_users < 1 or not 2 <= self.min_history <= self.max_history:
            raise ConfigError("need num_users >= 1 and 2 <= min_history <= max_history")
        unknown = [d for d in self.domains if d not in DOMAIN_NOUNS]
        if unknown:
            raise ConfigError(f"synthetic domains must be among {sorted(DOMAIN_NOUNS)}, got {unknown}")


def _items(cfg: SyntheticConfig, rng: np.random.Generator, topics: list[str]):
    """Items per (domain, topic), with captions and structured codes."""
    items: dict[str, Item] = {}
    codes: dict[str, tuple[int, int, int]] = {}
    by_cell: dict[tuple[str, int], list[str]] = {}
    cells = [(d, t) for d in cfg.domains for t in range(len(topics))]
    counts = np.full(len(cells), cfg.num_items // len(cells))
    counts[: cfg.num_items - counts.sum()] += 1
    running: dict[tuple[int, int], int] = {}
    for (domain, t), n in zip(cells, counts):
        keywords = TOPICS[topics[t]]
        ids = []
        for _ in range(int(n)):
            k = int(rng.integers(len(keywords)))
            adj = ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]
            item_id = f"{domain[0]}{len(items):06d}"
            caption = f"{adj.capitalize()} {DOMAIN_NOUNS[domain]} about {topics[t]}: {keywords[k]}."
            c3 = running.get((t, k), 0)
            running[(t, k)] = c3 + 1
            items[item_id] = Item(item_id, domain, caption, None, {"topic": topics[t], "keyword": keywords[k]})
            codes[item_id] = (t, k, c3)
            ids.append(item_id)
        by_cell[(domain, t)] = ids
    return items, codes, by_cell


def generate_synthetic(cfg: SyntheticConfig | None = None) -> tuple[RecLog, dict[str, tuple[int, ...]]]:
    """(log, item codes). Deterministic for a given config (seed included)."""
    cfg = cfg or SyntheticConfig()
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    topics = list(TOPICS)[: cfg.num_topics]
    items, codes, by_cell = _items(cfg, rng, topics)
    popularity = {
        cell: (1.0 / np.arange(1, len(ids) + 1)) / (1.0 / np.arange(1, len(ids) + 1)).sum()
        for cell, ids in by_cell.items()
    }
    users: list[User] = []
    n_topics = len(topics)
    for u in range(cfg.num_users):
        interest = rng.dirichlet(np.full(n_topics, cfg.interest_concentration))
        affinity = interest / interest.max()
        top = np.argsort(-interest)[:2]
        age = ("teen", "20s", "30s", "40s", "50+")[int(rng.integers(5))]
        profile = f"Interested in {topics[top[0]]} and {topics[top[1]]}; age group {age}."
        clock = int(1_600_000_000 + rng.integers(0, 10_000_000))
        histories: dict[str, list[Interaction]] = {}
        for domain in cfg.domains:
            length = int(rng.integers(cfg.min_history, cfg.max_history + 1))
            t = int(rng.choice(n_topics, p=interest))
            events = []
            ts = clock + int(rng.integers(0, 3600))
            for _ in range(length):
                if rng.random() > cfg.stickiness:
                    t = int(rng.choice(n_topics, p=interest))
                ids = by_cell[(domain, t)]
                item_id = ids[int(rng.choice(len(ids), p=popularity[(domain, t)]))]
                labels = _labels(domain, float(affinity[t]), rng)
                explanation = None
                if "like" in labels and rng.random() < 0.5:
                    explanation = (
                        f"The user keeps coming back to {topics[t]} content, and this "
                        f"{DOMAIN_NOUNS[domain]} about {items[item_id].attributes['keyword']} fits that taste."
                    )
                events.append(Interaction(item_id, ts, labels, explanation))
                ts += int(rng.integers(60, 86_400))
            histories[domain] = events
        searches = []
        for _ in range(int(rng.integers(0, 4))):
            t = int(rng.choice(n_topics, p=interest))
            domain = cfg.domains[int(rng.integers(len(cfg.domains)))]
            keyword = TOPICS[topics[t]][int(rng.integers(5))]
            ids = by_cell[(domain, t)]
            picked = rng.choice(len(ids), size=min(len(ids), int(rng.integers(1, 4))), replace=False)
            searches.append(
                Search(keyword, clock + int(rng.integers(0, 30 * 86_400)), tuple(ids[int(i)] for i in sorted(picked)))
            )
        searches.sort(key=lambda s: s.ts)
        users.append(User(f"u{u:06d}", histories, None, profile, searches))
    return RecLog(items, users, DropReport(), name="synthetic"), dict(codes)


def _labels(domain: str, affinity: float, rng: np.random.Generator) -> tuple[str, ...]:
    """Behaviour labels whose probabilities follow the user's affinity to the item's topic."""
    p = {
        "like": 0.05 + 0.75 * affinity,
        "long_view": 0.15 + 0.7 * affinity,
        "comment": 0.02 + 0.25 * affinity,
        "follow": 0.01 + 0.2 * affinity,
        "click": 0.05 + 0.6 * affinity,
        "purchase": 0.02 + 0.4 * affinity,
    }
    out = [lab for lab in DOMAIN_LABELS[domain] if rng.random() < p[lab]]
    if not out and rng.random() < 0.6 * (1.0 - affinity):
        out.append("dislike")
    return tuple(out)


def synthetic_codebook_size(codes: dict[str, tuple[int, ...]]) -> int:
    """Smallest codebook size that holds every synthetic code."""
    return max(max(c) for c in codes.values()) + 1 if codes else 1
