"""The fixed vocabulary of the simulated gift and home shop: categories, prices, names, countries, clocks.

Kept as plain data, apart from the code that draws from it, so a reader can see what kind of shop
is simulated and tune it without touching the simulation. Changing any value here changes the
generated data, so it requires bumping ``config.FORMAT_VERSION``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Category:
    name: str
    share: float          # relative share of the catalogue and of category choices
    median_price: float   # GBP; prices are log-normal around it
    price_sigma: float    # log-space spread of prices within the category
    nouns: tuple[str, ...]


CATEGORIES: tuple[Category, ...] = (
    Category("Candles & Holders", 1.4, 6.5, 0.50, ("Candle", "Tealight Holder", "Lantern", "Candle Set")),
    Category("Mugs & Cups", 1.3, 5.5, 0.35, ("Mug", "Espresso Cup", "Teacup and Saucer", "Travel Cup")),
    Category("Tableware", 1.0, 9.0, 0.60, ("Dinner Plate", "Side Plate", "Bowl", "Serving Platter")),
    Category("Glassware", 0.7, 7.5, 0.50, ("Tumbler", "Wine Glass", "Carafe", "Jam Jar Glass")),
    Category("Kitchen Storage", 1.1, 8.0, 0.50, ("Storage Jar", "Bread Bin", "Cake Tin", "Biscuit Barrel")),
    Category("Tea Towels & Aprons", 0.9, 6.0, 0.35, ("Tea Towel", "Apron", "Oven Glove", "Pot Holder")),
    Category("Cushions", 0.9, 16.0, 0.40, ("Cushion", "Cushion Cover", "Floor Cushion", "Bolster")),
    Category("Throws & Blankets", 0.6, 35.0, 0.45, ("Throw", "Blanket", "Bedspread", "Picnic Blanket")),
    Category("Wall Art", 0.7, 22.0, 0.70, ("Print", "Canvas", "Wall Plaque", "Tin Sign")),
    Category("Photo Frames", 0.9, 9.5, 0.50, ("Photo Frame", "Multi Frame", "Hanging Frame", "Photo Album")),
    Category("Clocks", 0.5, 24.0, 0.50, ("Wall Clock", "Alarm Clock", "Mantel Clock", "Kitchen Clock")),
    Category("Lighting", 0.6, 28.0, 0.60, ("Table Lamp", "Fairy Lights", "Pendant Shade", "String Lights")),
    Category("Vases & Planters", 0.8, 14.0, 0.55, ("Vase", "Planter", "Bud Vase", "Hanging Planter")),
    Category("Mirrors", 0.3, 45.0, 0.60, ("Wall Mirror", "Round Mirror", "Vanity Mirror", "Compact Mirror")),
    Category("Rugs & Doormats", 0.4, 25.0, 0.60, ("Doormat", "Rug", "Runner", "Bath Mat")),
    Category("Garden Decor", 0.6, 15.0, 0.70, ("Garden Ornament", "Wind Chime", "Solar Light", "Plant Marker")),
    Category("Bird Feeders", 0.4, 11.0, 0.50, ("Bird Feeder", "Bird House", "Bird Bath", "Seed Feeder")),
    Category("Christmas Decorations", 1.2, 4.5, 0.70, ("Bauble", "Hanging Decoration", "Wreath", "Advent Calendar")),
    Category("Gift Wrap & Ribbons", 1.0, 3.0, 0.50, ("Wrapping Paper", "Gift Bag", "Ribbon", "Gift Tag Set")),
    Category("Greeting Cards", 1.5, 2.75, 0.30, ("Birthday Card", "Thank You Card", "Card Pack", "Notecard Set")),
    Category("Stationery", 1.1, 4.0, 0.60, ("Pencil Set", "Sticky Notes", "Pen", "Letter Set")),
    Category("Notebooks & Journals", 0.9, 7.0, 0.45, ("Notebook", "Journal", "Sketchbook", "Planner")),
    Category("Bags & Totes", 0.8, 12.0, 0.60, ("Tote Bag", "Shopping Bag", "Lunch Bag", "Wash Bag")),
    Category("Jewellery & Trinket Boxes", 0.6, 10.0, 0.55,
             ("Trinket Box", "Jewellery Box", "Ring Dish", "Jewellery Stand")),
    Category("Toys & Games", 0.9, 12.0, 0.70, ("Jigsaw", "Card Game", "Soft Toy", "Spinning Top")),
    Category("Baby Gifts", 0.5, 15.0, 0.50, ("Baby Blanket", "Rattle", "Bib Set", "Memory Box")),
    Category("Bath & Body", 0.9, 8.5, 0.45, ("Soap", "Hand Cream", "Bath Salts", "Lip Balm")),
    Category("Party Supplies", 0.8, 3.5, 0.60, ("Bunting", "Paper Cups", "Napkins", "Cake Toppers")),
    Category("Storage Tins & Baskets", 0.7, 11.0, 0.55, ("Storage Tin", "Basket", "Crate", "Storage Box")),
    Category("Hooks & Doorstops", 0.4, 8.0, 0.45, ("Coat Hook", "Doorstop", "Key Holder", "Door Hanger")),
    Category("Pet Accessories", 0.5, 10.0, 0.60, ("Pet Bowl", "Dog Lead", "Cat Toy", "Pet Bed")),
    Category("Picnic & Outdoor", 0.4, 18.0, 0.60, ("Picnic Set", "Cool Bag", "Flask", "Enamel Plate")),
)

ADJECTIVES: tuple[str, ...] = (
    "Vintage", "Rustic", "Scandi", "Retro", "Classic", "Cottage", "Nordic", "Boho", "Art Deco",
    "Coastal", "Woodland", "Heritage", "Modern", "Hand-Painted", "Enamel", "Ceramic", "Rattan",
    "Linen", "Velvet", "Copper", "Brass", "Marble", "Bamboo", "Glass", "Felt", "Wooden",
    "Stoneware", "Pastel",
)

MOTIFS: tuple[str, ...] = (
    "Floral", "Polka Dot", "Gingham", "Stripe", "Heart", "Star", "Bee", "Rose", "Daisy", "Fern",
    "Robin", "Hare", "Fox", "Owl", "Lemon", "Strawberry", "Moon", "Rainbow", "Tartan", "Paisley",
    "Swallow", "Hedgehog", "Cactus", "Peacock",
)

#: Where customers live: a UK shop with some European and overseas buyers (ISO 3166 alpha-2).
COUNTRIES: tuple[tuple[str, float], ...] = (
    ("GB", 0.82), ("IE", 0.04), ("FR", 0.025), ("DE", 0.025), ("NL", 0.015), ("BE", 0.01),
    ("ES", 0.01), ("IT", 0.01), ("US", 0.01), ("SE", 0.008), ("DK", 0.007), ("NO", 0.005),
    ("CH", 0.005), ("AU", 0.005),
)

#: Orders per hour of the (UTC) day, relative: quiet nights, a lunchtime bump, an evening peak.
HOURLY_PROFILE = np.array(
    [1.2, 0.7, 0.4, 0.3, 0.3, 0.5, 1.2, 2.4, 3.6, 4.4, 4.8, 5.0,
     5.4, 5.2, 4.9, 4.8, 4.8, 5.0, 5.4, 6.2, 6.6, 6.0, 4.4, 2.5]
)

#: Order volume per weekday, Monday first, normalised to mean 1: busy Monday evenings after the
#: weekend's browsing, a quiet Saturday; strong enough that a weekly model term is worth learning.
WEEKDAY_PROFILE = np.array([1.12, 1.08, 1.04, 1.00, 0.92, 0.78, 1.06])
WEEKDAY_PROFILE = WEEKDAY_PROFILE / WEEKDAY_PROFILE.mean()

CURRENCY = "GBP"
