"""The shop's world: its catalogue and its customers, with the latent tastes that orders are drawn from.

Both are built in blocks - the initial catalogue and customer base, then one block per day of
arrivals - each from its own random stream, and ids are handed out in that order. A product or a
customer is therefore the same whichever range a run covers, and a run rebuilds exactly the world it
needs (up to its last day) instead of storing it.

What makes the data learnable, and why it is shaped this way:

* popularity is heavy-tailed (Pareto weights, a Zipf-like rank curve), as in real catalogues;
* each customer likes a few categories (three favourites plus an "anything" slot, Dirichlet-weighted:
  a sparse taste, which is what Dirichlet draws over ~30 categories look like anyway, at a fraction
  of the memory for a million customers);
* each customer has a handful of staples - products they keep coming back for - drawn from their
  taste when they sign up. Re-buying staples is what makes "the customer's own past items" the
  strongest baseline, as it is in real retail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np

from ecom_ml.generator.catalogue import ADJECTIVES, CATEGORIES, COUNTRIES, MOTIFS
from ecom_ml.generator.config import ShopParams
from ecom_ml.generator.lifecycle import Lives, draw_lives
from ecom_ml.generator.streams import stream
from ecom_ml.generator.timeline import US_PER_DAY, DayHeader, Timeline, day_start_us, intraday_us

#: Popularity weights are Pareto(alpha), capped; integer so cumulative sums are exact (see ``ProductSampler``).
POPULARITY_ALPHA = 1.1
POPULARITY_CAP = 2_000.0
WEIGHT_SCALE = 1_000
#: Favourite categories per customer, and the Dirichlet concentration of (fav1, fav2, fav3, anything).
FAVOURITES = 3
TASTE_ALPHA = np.array([1.2, 0.8, 0.6, 0.6])
#: Staples per customer and how often each slot is the one re-bought (first slot most).
STAPLE_SLOTS = np.array([0.40, 0.25, 0.15, 0.12, 0.08])
#: Customer activity (how often they order, relative) is log-normal, capped: a few customers order a lot,
#: but none like a wholesaler placing several orders a day.
ACTIVITY_SIGMA = 1.0
ACTIVITY_CAP = 12.0
#: Initial customers signed up over this many days before the anchor; initial products launched over this many.
CUSTOMER_HISTORY_DAYS = 730
PRODUCT_HISTORY_DAYS = 1_095

_CATEGORY_SHARE = np.array([c.share for c in CATEGORIES])
_CATEGORY_SHARE = _CATEGORY_SHARE / _CATEGORY_SHARE.sum()
_CATEGORY_CUM = np.cumsum(_CATEGORY_SHARE)
_COUNTRY_CUM = np.cumsum([w for _, w in COUNTRIES]) / sum(w for _, w in COUNTRIES)
_NOUN_COUNT = np.array([len(c.nouns) for c in CATEGORIES])
_NOUN_OFFSET = np.concatenate([[0], np.cumsum(_NOUN_COUNT)[:-1]])
_NOUNS = tuple(noun for c in CATEGORIES for noun in c.nouns)
_CHUNK = 65_536  # customers per slice of the (customers x categories) favourites draw, bounding memory
_CUM_SHIFT = 44  # category << 44 | within-category cumulative weight; weights stay far below 2**44


def draw_categories(rng: np.random.Generator, n: int) -> np.ndarray:
    """Categories drawn by the shop-wide category shares."""
    return np.searchsorted(_CATEGORY_CUM, rng.random(n), side="right").clip(max=len(CATEGORIES) - 1)


def taste_categories(rng: np.random.Generator, favourites: np.ndarray, taste_cum: np.ndarray) -> np.ndarray:
    """One category per row, drawn from that row's taste: a favourite, or any category by shop share."""
    n = len(favourites)
    slot = (taste_cum[:, :-1] < rng.random(n)[:, None]).sum(axis=1)
    anything = draw_categories(rng, n)
    picked = favourites[np.arange(n), np.minimum(slot, FAVOURITES - 1)]
    return np.where(slot < FAVOURITES, picked, anything)


@dataclass(frozen=True)
class Catalogue:
    """Products by id (index = id - 1)."""

    category: np.ndarray     # int64
    weight: np.ndarray       # int64 popularity weight
    price_cents: np.ndarray  # int64 list price
    created_us: np.ndarray   # int64, Unix microseconds
    name_parts: np.ndarray   # (n, 3) indices into ADJECTIVES, MOTIFS, nouns

    def __len__(self) -> int:
        return len(self.category)

    def names(self, lo: int, hi: int) -> list[str]:
        """Display names of products with ids in (lo, hi]."""
        parts = self.name_parts[lo:hi]
        return [f"{ADJECTIVES[a]} {MOTIFS[m]} {_NOUNS[n]}" for a, m, n in parts.tolist()]


def _product_block(rng: np.random.Generator, n: int, created_lo: int, created_hi: int,
                   cover_categories: bool) -> dict[str, np.ndarray]:
    category = draw_categories(rng, n)
    if cover_categories:  # every category has an initial product, so sampling within one never finds none
        category[: len(CATEGORIES)] = np.arange(len(CATEGORIES))
    pareto = (1.0 - rng.random(n)) ** (-1.0 / POPULARITY_ALPHA)
    weight = np.round(np.minimum(pareto, POPULARITY_CAP) * WEIGHT_SCALE).astype(np.int64)
    median = np.array([c.median_price for c in CATEGORIES])[category]
    sigma = np.array([c.price_sigma for c in CATEGORIES])[category]
    pounds = median * np.exp(sigma * rng.standard_normal(n))
    # Shop-style prices: whole or half pounds minus a penny (2.49, 12.99), never below 0.49.
    price_cents = np.maximum(np.round(pounds * 2.0) * 50 - 1, 49).astype(np.int64)
    created = rng.integers(created_lo, created_hi, n)
    names = np.stack([rng.integers(0, len(ADJECTIVES), n), rng.integers(0, len(MOTIFS), n),
                      _NOUN_OFFSET[category] + rng.integers(0, _NOUN_COUNT[category])], axis=1)
    return {"category": category.astype(np.int64), "weight": weight, "price_cents": price_cents,
            "created_us": created.astype(np.int64), "name_parts": names}


def build_catalogue(params: ShopParams, timeline: Timeline) -> Catalogue:
    anchor_us = day_start_us(params.anchor)
    blocks = [_product_block(stream(params.seed, "products", 0), params.products,
                             anchor_us - PRODUCT_HISTORY_DAYS * US_PER_DAY, anchor_us, cover_categories=True)]
    for header in timeline.headers(params.anchor, timeline.end):
        if header.new_products:
            # Launched during the day; on sale from the next day (see DayHeader.products_before).
            blocks.append(_product_block(stream(params.seed, "products", header.day.toordinal()),
                                         header.new_products, header.start_us, header.start_us + US_PER_DAY,
                                         cover_categories=False))
    return Catalogue(**{key: np.concatenate([b[key] for b in blocks]) for key in blocks[0]})


class ProductSampler:
    """Draws products by popularity within given categories, among the products on sale on a day.

    Products are sorted by (category, id) with an exact integer cumulative weight that restarts in
    each category. Restricting to "ids up to N" is a prefix of each category's run, and that prefix's
    cumulative weights do not depend on products launched later - so a draw on a given day is the
    same whether the run's world ends that day or a year later (continuation needs that).
    """

    def __init__(self, catalogue: Catalogue) -> None:
        ids = np.arange(1, len(catalogue) + 1, dtype=np.int64)
        order = np.lexsort((ids, catalogue.category))
        category = catalogue.category[order]
        self._ids = ids[order]
        cum = np.cumsum(catalogue.weight[order])
        self._cat_start = np.searchsorted(category, np.arange(len(CATEGORIES)))
        before = np.concatenate([[0], cum])[self._cat_start][category]
        self._within = cum - before
        self._id_keys = (category << 32) | self._ids
        self._cum_keys = (category << _CUM_SHIFT) + self._within

    def sample(self, rng: np.random.Generator, categories: np.ndarray, on_sale: int | np.ndarray) -> np.ndarray:
        """One product id per entry of ``categories``, among ids <= ``on_sale`` (scalar or per row)."""
        categories = categories.astype(np.int64)
        end = np.searchsorted(self._id_keys, (categories << 32) | np.asarray(on_sale, dtype=np.int64), side="right")
        total = self._within[end - 1]
        picks = rng.integers(0, total)
        return self._ids[np.searchsorted(self._cum_keys, (categories << _CUM_SHIFT) + picks, side="right")]


@dataclass(frozen=True)
class Population:
    """Customers by id (index = id - 1)."""

    country: np.ndarray       # int64 index into COUNTRIES
    created_us: np.ndarray    # int64
    favourites: np.ndarray    # (n, FAVOURITES) category indices
    taste_cum: np.ndarray     # (n, FAVOURITES + 1) cumulative taste over (favourites..., anything)
    activity_cum: np.ndarray  # int64 cumulative activity weight by id, for drawing who orders
    staples: np.ndarray       # (n, len(STAPLE_SLOTS)) product ids
    lives: Lives | None = None  # lifetimes, fades and seasons when the shop has a customer lifecycle

    def __len__(self) -> int:
        return len(self.country)


def _favourites(rng: np.random.Generator, n: int) -> np.ndarray:
    """Favourite categories: weighted sampling without replacement by the Gumbel top-k trick."""
    gumbel = np.log(_CATEGORY_SHARE)[None, :] - np.log(-np.log(rng.random((n, len(CATEGORIES)))))
    return np.argsort(-gumbel, axis=1, kind="stable")[:, :FAVOURITES]


def _customer_block(rng: np.random.Generator, n: int, created: np.ndarray, on_sale: int,
                    sampler: ProductSampler) -> dict[str, np.ndarray]:
    country = np.searchsorted(_COUNTRY_CUM, rng.random(n), side="right").clip(max=len(COUNTRIES) - 1)
    favourites = np.concatenate([_favourites(rng, min(_CHUNK, n - lo)) for lo in range(0, n, _CHUNK)] or
                                [np.empty((0, FAVOURITES), dtype=np.int64)])
    taste_cum = np.cumsum(rng.dirichlet(TASTE_ALPHA, n), axis=1)
    relative_activity = np.minimum(np.exp(ACTIVITY_SIGMA * rng.standard_normal(n)), ACTIVITY_CAP)
    activity = np.maximum(np.round(relative_activity * WEIGHT_SCALE), 1)
    slots = len(STAPLE_SLOTS)
    staple_categories = taste_categories(rng, np.repeat(favourites, slots, axis=0), np.repeat(taste_cum, slots, axis=0))
    staples = sampler.sample(rng, staple_categories, on_sale).reshape(n, slots)
    return {"country": country.astype(np.int64), "created_us": created.astype(np.int64),
            "favourites": favourites, "taste_cum": taste_cum, "activity": activity.astype(np.int64),
            "staples": staples}


def build_population(params: ShopParams, timeline: Timeline, sampler: ProductSampler) -> Population:
    anchor_us = day_start_us(params.anchor)
    rng = stream(params.seed, "customers", 0)
    created = np.sort(rng.integers(anchor_us - CUSTOMER_HISTORY_DAYS * US_PER_DAY, anchor_us, params.customers))
    blocks = [_customer_block(rng, params.customers, created, params.products, sampler)]
    keys = [0]
    for header in timeline.headers(params.anchor, timeline.end):
        if header.new_customers:
            rng = stream(params.seed, "customers", header.day.toordinal())
            created = np.sort(header.start_us + intraday_us(rng, header.new_customers))
            blocks.append(_customer_block(rng, header.new_customers, created, header.products_before, sampler))
            keys.append(header.day.toordinal())
    arrays = {key: np.concatenate([b[key] for b in blocks]) for key in blocks[0]}
    activity = arrays.pop("activity")
    arrays["activity_cum"] = np.cumsum(activity)
    lives = None
    if params.lifecycle is not None:  # its own stream per block: the draws above are unchanged
        drawn = [draw_lives(params.seed, key, b["created_us"], params.lifecycle) for key, b in zip(keys, blocks)]
        lives = Lives(**{key: np.concatenate([d[key] for d in drawn]) for key in drawn[0]}, activity=activity)
    return Population(**arrays, lives=lives)


@dataclass(frozen=True)
class World:
    """Everything a day's orders are drawn from, for the days of one timeline."""

    params: ShopParams
    timeline: Timeline
    catalogue: Catalogue
    sampler: ProductSampler
    population: Population

    def header(self, day: date) -> DayHeader:
        return self.timeline.header(day)


def build_world(params: ShopParams, end: date) -> World:
    """The world from the anchor up to (not including) ``end``."""
    timeline = Timeline(params, end)
    catalogue = build_catalogue(params, timeline)
    sampler = ProductSampler(catalogue)
    population = build_population(params, timeline, sampler)
    return World(params, timeline, catalogue, sampler, population)
