"""Mango datathon 2023 outfits: 7,842 curated outfits over 9,222 products described by attributes only."""

from __future__ import annotations

import os

import pandas as pd

from ._common import Outfit, OutfitDataset, dataset_dir, item_frame, join_sentences, require_file

FOLDER = "mango-outfits"
PREFIX = "mango:"

# Spanish colour names (des_color_specification_esp) -> English; unknown names fall back to the English group.
COLOURS = {
    "NEGRO": "black", "CRUDO": "ecru", "OFFWHITE": "off-white", "ORO": "gold", "BLANCO": "white", "BEIGE": "beige",
    "VERDE": "green", "MARRON": "brown", "AZUL": "blue", "KHAKI": "khaki", "ROJO": "red", "PLATA": "silver",
    "NAVY": "navy", "CAMEL": "camel", "GRIS": "grey", "ROSA": "pink", "ARENA": "sand", "NARANJA": "orange",
    "TEJANO MEDIO": "medium denim", "PIEDRA": "stone", "TEJANO NEGRO": "black denim", "CELESTE": "sky blue",
    "MOSTAZA": "mustard", "FUCSIA": "fuchsia", "CHOCOLATE": "chocolate", "GRIS MEDIO VIGORE": "medium grey marl",
    "TEJANO OSCURO": "dark denim", "CUERO": "leather brown", "ROSA PASTEL": "pastel pink",
    "GRIS CLARO VIGORE": "light grey marl", "ANTRACITA": "charcoal", "TEJANO CLARO": "light denim",
    "GRANATE": "maroon", "TERRACOTA": "terracotta", "CALDERO": "copper brown", "TOPO": "taupe", "MORADO": "purple",
    "AMARILLO": "yellow", "NUDE": "nude", "CARAMELO": "caramel", "BURDEOS": "burgundy", "BOTELLA": "bottle green",
    "AMARILLO PASTEL": "pastel yellow", "TURQUESA": "turquoise", "MALVA": "mauve", "MARINO": "navy",
    "VISON": "mink", "VERDE PASTEL": "pastel green", "GRIS OSCURO VIGORE": "dark grey marl", "PERLA": "pearl",
    "TABACO": "tobacco", "CORAL": "coral", "AGUA": "aqua", "VINO": "wine", "AZUL NOCHE": "midnight blue",
    "LIMA": "lime", "ROSA PALO": "blush pink", "OLIVA": "olive", "PEACH": "peach", "OCRE": "ochre",
    "VAINILLA": "vanilla", "FRESA": "strawberry red", "MARFIL": "ivory", "LILA": "lilac", "COGNAC": "cognac",
}
FABRICS = {
    "P-PLANA": "woven fabric", "C-COMPLEMENTOS": "accessory", "K-CIRCULAR": "jersey knit", "T-TRICOT": "knitwear",
    "J-JEANS": "denim", "O-POLIPIEL": "faux leather", "L-PIEL": "leather",
}


def load_mango(root: str | os.PathLike[str] | None = None) -> OutfitDataset:
    """Load Mango products (id "mango:<cod_modelo_color>", attribute text) and outfits (slot = product category)."""
    folder = dataset_dir(FOLDER, root)
    products = pd.read_csv(require_file(folder, "product_data.csv"), dtype=str, keep_default_na=False)
    colour = [
        COLOURS.get(spec.strip().upper(), group.strip().lower())
        for spec, group in zip(products["des_color_specification_esp"], products["des_agrup_color_eng"])
    ]
    ptype = products["des_product_type"].str.strip()
    titles = [f"{c.capitalize()} {t.lower()}" if c else t for c, t in zip(colour, ptype)]
    texts = [
        join_sentences(
            [
                title,
                " > ".join(dict.fromkeys(x for x in (cat, agg, fam) if x)),
                f"Colour: {c}" + (f" ({g.lower()})" if g and g.lower() not in c else ""),
                f"Fabric: {FABRICS.get(fab, fab.lower())}" if fab else "",
                f"{sex} {age.lower()}".strip(),
            ]
        )
        for title, cat, agg, fam, c, g, fab, sex, age in zip(
            titles,
            products["des_product_category"],
            products["des_product_aggregated_family"],
            products["des_product_family"],
            colour,
            products["des_agrup_color_eng"],
            products["des_fabric"],
            products["des_sex"],
            products["des_age"],
        )
    ]
    items = item_frame(
        PREFIX + products["cod_modelo_color"],
        titles,
        texts,
        products["des_product_family"],
        slot=products["des_product_category"],
        aggregated_family=products["des_product_aggregated_family"],
        product_type=ptype,
        colour=colour,
        line=products["des_line"],
    )
    slot_of = dict(zip(items["id"], items["slot"]))
    category_of = dict(zip(items["id"], items["category"]))
    links = pd.read_csv(require_file(folder, "outfit_data.csv"), dtype=str)
    links["item_id"] = PREFIX + links["cod_modelo_color"]
    missing = sorted(set(links["item_id"]) - set(slot_of))
    if missing:
        raise KeyError(
            f"outfit_data.csv names {len(missing)} products absent from product_data.csv, e.g. {missing[:3]}"
        )
    outfits = [
        Outfit(
            set_id=str(outfit_id),
            split="all",
            item_ids=group.tolist(),
            slots=[slot_of[i] for i in group],
            categories=[category_of[i] for i in group],
        )
        for outfit_id, group in links.groupby("cod_outfit", sort=False)["item_id"]
    ]
    return OutfitDataset(items=items, outfits=outfits)
