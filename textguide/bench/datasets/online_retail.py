"""UCI Online Retail (2010-12..2011-12) and Online Retail II (2009-12..2010-12): UK gift and home ware."""

from __future__ import annotations

import os
import re
from typing import Literal

import numpy as np
import pandas as pd

from ._common import dataset_dir, find_file

FOLDER = "online-retail"
PREFIX = "or:"
FILES = {
    "2010-12_2011-12": "online_retail_2010-12_2011-12",
    "II_2009-12_2010-12": "online_retail_II_2009-12_2010-12",
}
Which = Literal["2010-12_2011-12", "II_2009-12_2010-12", "both"]

# Stock codes that are not products: fees, postage, adjustments, samples, tests, vouchers.
NON_PRODUCT_CODE = re.compile(r"^(?:[^0-9]*|ADJUST\w*|TEST\w*|GIFT\w*|DCGS\w*|C2|AMAZONFEE|BANK CHARGES|CRUK)$")
NON_PRODUCT_DESCRIPTION = re.compile(
    r"^(?:(?:dotcom )?postage|(?:next day )?carriage|manual|discount|bank charges|amazon fee|samples?|"
    r"packing charge|high resolution image|this is a test product\.?|adjust(?:ment)?\b.*|.*gift voucher.*|"
    r"cruk commission)$",
    re.IGNORECASE,
)
_SUBWORD = re.compile(r"[^-/]+")


def _read(path: os.PathLike[str]) -> pd.DataFrame:
    """Read one Online Retail CSV with compact dtypes."""
    return pd.read_csv(
        path,
        usecols=[
            "InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country",
        ],
        dtype={
            "InvoiceNo": str,
            "StockCode": str,
            "Description": str,
            "Quantity": "int32",
            "InvoiceDate": str,
            "UnitPrice": "float64",
            "CustomerID": "float64",
            "Country": str,
        },
    )


def _title(description: str) -> str:
    """'WHITE HANGING HEART T-LIGHT HOLDER' -> 'White Hanging Heart T-Light Holder' (parts split by - and /)."""
    return " ".join(_SUBWORD.sub(lambda m: m.group(0).capitalize(), word) for word in description.split())


def load_online_retail(
    root: str | os.PathLike[str] | None = None, which: Which = "2010-12_2011-12"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load (items, transactions): product purchases by known customers, cancellations and fees removed."""
    if which not in (*FILES, "both"):
        raise ValueError(f"which must be one of {[*FILES, 'both']}, got {which!r}")
    folder = dataset_dir(FOLDER, root)
    names = list(FILES) if which == "both" else [which]
    frames = [_read(find_file(folder, FILES[n] + ".csv.gz", FILES[n] + ".csv")) for n in names]
    if which == "both":
        # The files share 2010-12-01..09 with identical rows: keep that week from the later file only.
        later = set(frames[0]["InvoiceNo"].unique())
        frames[1] = frames[1][~frames[1]["InvoiceNo"].isin(later)]
        frames = [frames[1], frames[0]]
    raw = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    # Normalise and classify each distinct code / description once, then broadcast (fast on ~1M rows).
    code_idx, code_values = pd.factorize(raw["StockCode"])  # NaN -> -1
    code_norm = [str(c).strip().upper() for c in code_values]
    code_bad = np.array([bool(NON_PRODUCT_CODE.match(c)) for c in code_norm] + [True])
    norm_of_code, codes = pd.factorize(pd.Index(code_norm, dtype=object))
    desc_idx, desc_values = pd.factorize(raw["Description"])  # NaN -> -1
    desc_norm = [" ".join(str(d).split()) for d in desc_values]
    desc_bad = np.array([bool(NON_PRODUCT_DESCRIPTION.match(d)) for d in desc_norm] + [False])
    norm_of_desc, descriptions = pd.factorize(pd.Index(desc_norm, dtype=object))
    keep = (
        raw["InvoiceNo"].str.match(r"^\d", na=False).to_numpy(dtype=bool)  # drops "C" cancellations, "A" adjustments
        & (raw["Quantity"] > 0).to_numpy()
        & (raw["UnitPrice"] > 0).to_numpy()
        & raw["CustomerID"].notna().to_numpy()
        & ~code_bad[code_idx]
        & ~desc_bad[desc_idx]
    )
    raw = raw[keep].reset_index(drop=True)
    row_code = norm_of_code[code_idx[keep]]
    row_desc = np.append(norm_of_desc, -1)[desc_idx[keep]]
    timestamp = pd.to_datetime(raw["InvoiceDate"], format="%Y-%m-%d %H:%M:%S")

    # Item text = the most frequent description of the code (ties: alphabetical).
    pairs = pd.DataFrame({"code": row_code, "desc": row_desc})
    pairs = pairs[pairs["desc"] >= 0].value_counts().rename("n").reset_index()
    pairs["text"] = descriptions.to_numpy()[pairs["desc"].to_numpy()]
    pairs = pairs.sort_values(["code", "n", "text"], ascending=[True, False, True]).drop_duplicates("code")
    pairs["stock_code"] = codes.to_numpy()[pairs["code"].to_numpy()]
    pairs = pairs.sort_values("stock_code")

    stats = pd.DataFrame({"code": row_code, "price": raw["UnitPrice"], "timestamp": timestamp}).groupby("code")
    order = pairs["code"].to_numpy()
    items = pd.DataFrame(
        {
            "id": [PREFIX + c for c in pairs["stock_code"]],
            "title": [_title(t) for t in pairs["text"]],
            "text": pairs["text"].tolist(),
            "category": "",
            "stock_code": pairs["stock_code"].tolist(),
            "price": stats["price"].median().reindex(order).to_numpy(),
            "first_seen": stats["timestamp"].min().reindex(order).to_numpy(),
            "n_lines": stats.size().reindex(order).to_numpy(),
        }
    )
    item_of_code = np.full(len(codes), "", dtype=object)
    item_of_code[order] = items["id"].to_numpy()
    customer_idx, customers = pd.factorize(raw["CustomerID"])
    transactions = pd.DataFrame(
        {
            "invoice": raw["InvoiceNo"],
            "customer_id": np.array([str(int(c)) for c in customers], dtype=object)[customer_idx],
            "item_id": item_of_code[row_code],
            "timestamp": timestamp,
            "quantity": raw["Quantity"],
            "price": raw["UnitPrice"],
            "country": raw["Country"],
        }
    )
    known = np.isin(row_code, order)  # codes whose every line lacked a description have no item
    return items, transactions[known].reset_index(drop=True)
