"""UCI in-vehicle coupon recommendation: 12,684 (context, coupon) rows, accepted or not, verbalised as text."""

from __future__ import annotations

import os

import pandas as pd

from ._common import dataset_dir, is_missing, require_file

FOLDER = "uci-in-vehicle-coupon"
FILE = "in-vehicle-coupon-recommendation.csv"

DESTINATIONS = {"No Urgent Place": ", no urgent destination", "Home": " home", "Work": " to work"}
PASSENGERS = {"Alone": "alone", "Friend(s)": "with friends", "Partner": "with a partner", "Kid(s)": "with kids"}
EXPIRATIONS = {"1d": "1 day", "2h": "2 hours"}
AGES = {"below21": "under 21", "50plus": "50 or older"}
FREQUENCIES = {
    "never": "never",
    "less1": "less than once a month",
    "1~3": "1-3 times a month",
    "4~8": "4-8 times a month",
    "gt8": "more than 8 times a month",
}
VENUES = [
    ("Bar", "bars"),
    ("CoffeeHouse", "coffee houses"),
    ("CarryAway", "take-away places"),
    ("RestaurantLessThan20", "restaurants under $20"),
    ("Restaurant20To50", "restaurants at $20-50"),
]


def _coupon_text(row: dict[str, object]) -> str:
    """'Coupon: Coffee House, expires in 1 day; the venue is 15-25 minutes away, in the same direction.'"""
    expiry = EXPIRATIONS.get(str(row["expiration"]), str(row["expiration"]))
    if row["toCoupon_GEQ25min"] == 1:
        distance = "more than 25 minutes away"
    elif row["toCoupon_GEQ15min"] == 1:
        distance = "15-25 minutes away"
    elif row["toCoupon_GEQ5min"] == 1:
        distance = "5-15 minutes away"
    else:
        distance = "less than 5 minutes away"
    direction = "in the same direction" if row["direction_same"] == 1 else "in the opposite direction"
    return f"Coupon: {row['coupon']}, expires in {expiry}; the venue is {distance}, {direction}."


def _context_text(row: dict[str, object]) -> str:
    """'Driving alone to work, sunny 80F at 7AM.'"""
    where = DESTINATIONS.get(str(row["destination"]), f" to {row['destination']}")
    who = PASSENGERS.get(str(row["passanger"]), f"with {row['passanger']}")
    return f"Driving {who}{where}, {str(row['weather']).lower()} {row['temperature']}F at {row['time']}."


def _driver_text(row: dict[str, object]) -> str:
    """'Driver: female, aged 26, single, no children, Bachelors degree, Student, income $12500 - $24999; ...'"""
    age = "aged " + AGES.get(str(row["age"]), str(row["age"]))
    children = "has children" if row["has_children"] == 1 else "no children"
    parts = [str(row["gender"]).lower(), age, str(row["maritalStatus"]).lower(), children, str(row["education"]),
             str(row["occupation"]), f"income {row['income']}"]
    if not is_missing(row.get("car")):
        parts.append(f"car: {row['car']}")
    visits = [
        f"{label} {FREQUENCIES.get(str(row[column]), str(row[column]))}"
        for column, label in VENUES
        if not is_missing(row.get(column))
    ]
    text = "Driver: " + ", ".join(parts)
    if visits:
        text += "; visits " + ", ".join(visits)
    return text + "."


def load_uci_coupon(root: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Load the rows with text (context + coupon + driver), coupon_text, user_text, label, plus the raw columns."""
    path = require_file(dataset_dir(FOLDER, root), FILE)
    raw = pd.read_csv(path, sep=";")
    if "Y" not in raw.columns:
        raise ValueError(f"{path}: no 'Y' column; expected the ';'-separated UCI file (see README.md there)")
    records = raw.to_dict("records")
    coupon = [_coupon_text(r) for r in records]
    context = [_context_text(r) for r in records]
    driver = [_driver_text(r) for r in records]
    head = pd.DataFrame(
        {
            "text": [f"{c} {k} {d}" for c, k, d in zip(context, coupon, driver)],
            "coupon_text": coupon,
            "user_text": [f"{d} {c}" for d, c in zip(driver, context)],
            "label": raw["Y"].astype("int8"),
        }
    )
    return pd.concat([head, raw], axis=1)
