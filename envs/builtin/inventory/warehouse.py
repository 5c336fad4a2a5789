"""The inventory world: ten SKUs in four categories, and the operations the tools expose.

Pure, deterministic and in memory: every `Warehouse()` starts from the same `CATALOGUE`,
so each environment instance (one per session) owns an independent copy. Misuse raises
an `InventoryError` whose message is written for the agent that caused it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from hillclimb.errors import HillclimbError


class InventoryError(HillclimbError, ValueError):
    """A tool was called with something the warehouse cannot do; the agent sees the message."""


class UnknownSkuError(InventoryError, LookupError):
    """No item has that SKU."""


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: str
    name: str
    category: str
    price: float = Field(ge=0)
    """Unit price in dollars."""
    stock: int = Field(ge=0)
    """Units on hand."""


CATALOGUE: tuple[Item, ...] = (
    Item(sku="KB-101", name="Mechanical keyboard", category="peripherals", price=89.00, stock=14),
    Item(sku="MS-102", name="Wireless mouse", category="peripherals", price=24.50, stock=3),
    Item(sku="MN-201", name="27-inch monitor", category="displays", price=219.99, stock=6),
    Item(sku="MN-202", name="Portable monitor", category="displays", price=149.00, stock=2),
    Item(sku="CB-301", name="USB-C cable 1m", category="cables", price=9.99, stock=40),
    Item(sku="CB-302", name="HDMI cable 2m", category="cables", price=12.49, stock=4),
    Item(sku="HD-401", name="Noise-cancelling headset", category="audio", price=129.00, stock=8),
    Item(sku="SP-402", name="Desk speaker pair", category="audio", price=59.90, stock=0),
    Item(sku="DK-501", name="USB-C docking station", category="peripherals", price=179.00, stock=5),
    Item(sku="WC-601", name="1080p webcam", category="peripherals", price=49.95, stock=11),
)

INITIAL_STOCK: dict[str, int] = {item.sku: item.stock for item in CATALOGUE}


class Warehouse:
    """One mutable copy of the catalogue."""

    def __init__(self) -> None:
        self._items = {item.sku: item for item in CATALOGUE}

    @property
    def stock(self) -> dict[str, int]:
        return {sku: item.stock for sku, item in self._items.items()}

    @property
    def categories(self) -> list[str]:
        return sorted({item.category for item in self._items.values()})

    def items(self, category: str | None = None) -> list[Item]:
        if category is not None and category not in self.categories:
            raise InventoryError(f"unknown category {category!r}; categories are {', '.join(self.categories)}")
        return [item for item in self._items.values() if category is None or item.category == category]

    def get(self, sku: str) -> Item:
        try:
            return self._items[sku]
        except KeyError:
            raise UnknownSkuError(f"no item has SKU {sku!r}; list_items shows every SKU") from None

    def adjust(self, sku: str, delta: int) -> Item:
        item = self.get(sku)
        if item.stock + delta < 0:
            raise InventoryError(f"cannot remove {-delta} units of {sku}: only {item.stock} in stock")
        self._items[sku] = item.model_copy(update={"stock": item.stock + delta})
        return self._items[sku]

    def search(self, query: str) -> list[Item]:
        """Items whose name or SKU contains `query`, ignoring case."""
        needle = query.casefold()
        return [
            item for item in self._items.values() if needle in item.name.casefold() or needle in item.sku.casefold()
        ]
