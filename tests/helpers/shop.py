"""A small shop (hiking, kitchen, camera) for the grounding, constraint and template tests: product dicts as
`Retriever.recommend` returns them and the items table their vocabulary is built from."""

from __future__ import annotations

import pandas as pd

COLUMNS = ["item_id", "title", "brand", "category", "description", "price"]
SHOP = [
    ("b1", "Soltek Pro Trekking Boots - EU 42 / Brown / Leather", "Soltek", "Clothing & Shoes > Shoes > Hiking Boots",
     "Sturdy trekking boots with grippy soles.", 89.99),
    ("b2", "Soltek Elite EU Black Suede Waterproof Hiking Boots", "Soltek", "Clothing & Shoes > Shoes > Hiking Boots",
     "Waterproof suede hiking boots.", 129.99),
    ("b3", "Evara Trail Socks (Wool, 2 pairs)", "Evara", "Clothing & Shoes > Socks", "Merino wool socks.", 14.99),
    ("b4", "Evara Daypack 20 L, Nylon", "Evara", "Sports & Outdoors > Backpacks", "A light daypack.", 49.99),
    ("k1", "Norlux Saucepan Lite - Stainless Steel / 2 L", "Norlux", "Home & Kitchen > Cookware > Saucepans",
     "A no-frills saucepan for soups and sauces.", 30.99),
    ("k2", "Norlux Frying Pan, Cast Iron", "Norlux", "Home & Kitchen > Cookware > Frying Pans",
     "A cast iron frying pan.", 45.0),
    ("k3", "Brisen Premium Chef Knife, Damascus Steel", "Brisen", "Home & Kitchen > Cutlery > Knives",
     "Premium chef knife.", 99.0),
    ("k4", "Calion Spice Blend, Natural Ingredients", "Calion", "Grocery > Spices",
     "Made with the finest natural ingredients.", 6.5),
    ("e1", "Ionmont Sling Camera Bag, Canvas, Gray", "Ionmont", "Electronics > Camera Accessories > Camera Bags",
     "A plain canvas camera bag.", 57.99),
    ("e2", "Lumfield LED Headlamp, Rechargeable", "Lumfield", "Sports & Outdoors > Lighting > Headlamps",
     "A bright LED headlamp.", 24.99),
    ("e3", "Korex Memory Card (256 GB)", "Korex", "Electronics > Camera Accessories > Memory Cards",
     "A fast memory card.", 39.99),
    ("e4", "Zenana Tripod, Aluminium", "Zenana", "Electronics > Camera Accessories > Tripods", "A light tripod.", 64.0),
]
TABLE = pd.DataFrame(SHOP, columns=COLUMNS)
PRO_BOOTS, ELITE_BOOTS, SOCKS, DAYPACK, SAUCEPAN, FRYING_PAN, KNIFE, SPICE, CAMERA_BAG, HEADLAMP, CARD, TRIPOD = (
    dict(zip(COLUMNS, row)) for row in SHOP)
