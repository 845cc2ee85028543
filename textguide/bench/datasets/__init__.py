"""Loaders for the public datasets in ../shared/data (one small module each; files are read in place).

Every items DataFrame has the columns ``id`` (namespaced string id, e.g. "sci:B0000223SI"), ``title``, ``text``
(the string to embed, at most ~400 characters) and ``category``, plus dataset-specific columns.
The data root is $TEXTGUIDE_DATA, else ``<repo>/../shared/data``; every loader also takes ``root=``.
"""

from ._common import (
    Outfit,
    OutfitDataset,
    SeqExample,
    SequenceDataset,
    compose_column,
    data_root,
    join_sentences,
)
from .amazon_clothing import ClothingDataset, load_clothing
from .amazon_industrial_office import load_domain
from .amazon_scientific import load_scientific
from .amazon_toys import load_toys
from .amexpert import AmExpertDataset, load_amexpert
from .chinese_titles import load_amazon_cn, load_amazon_cn_ratings, load_chinese_titles
from .completejourney import CouponDataset, coupon_examples, household_split, load_completejourney
from .hm import hm_baskets, load_hm_articles, load_hm_transactions
from .instacart import BasketDataset, load_instacart
from .mango import load_mango
from .online_retail import load_online_retail
from .polyvore import load_polyvore
from .uci_coupon import load_uci_coupon

__all__ = [
    "AmExpertDataset",
    "BasketDataset",
    "ClothingDataset",
    "CouponDataset",
    "Outfit",
    "OutfitDataset",
    "SeqExample",
    "SequenceDataset",
    "compose_column",
    "coupon_examples",
    "data_root",
    "hm_baskets",
    "household_split",
    "join_sentences",
    "load_amazon_cn",
    "load_amazon_cn_ratings",
    "load_amexpert",
    "load_chinese_titles",
    "load_clothing",
    "load_completejourney",
    "load_domain",
    "load_hm_articles",
    "load_hm_transactions",
    "load_instacart",
    "load_mango",
    "load_online_retail",
    "load_polyvore",
    "load_scientific",
    "load_toys",
    "load_uci_coupon",
]
