"""Pydantic models of every document on the bus (DESIGN.md §4), with the seed's field names.

`load(Model, path, data)` validates a stored document and raises DocumentError naming the path
and the field, never a pydantic traceback. Timestamps are timezone-aware and normalised to UTC.
"""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, Optional, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, with_config
from typing_extensions import NotRequired, TypedDict

from lib.errors import DocumentError

UTC = dt.timezone.utc


def _to_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware (UTC)")
    return value.astimezone(UTC)


Timestamp = Annotated[dt.datetime, AfterValidator(_to_utc)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)


class _Loose(BaseModel):
    """For documents written by our own adapters: keep unknown fields (broker detail) as they are."""
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


# ---- config/common and config/{mode} -------------------------------------------------------------
class Exposure(_Doc):
    # (0, 1]: leverage is allowed only through an explicit risk.max_gross_exposure above 1.
    overall: float = Field(1.0, gt=0.0, le=1.0, description="fraction of net liquidation the strategies may use")


class OrderDefaults(_Doc):
    type: Literal["MKT", "LMT", "MOC", "LOC"] = "MKT"
    tif: Literal["DAY", "GTC", "OPG", "IOC"] = "DAY"
    limit_offset_bps: float = Field(10.0, ge=0.0, description="LMT/LOC: buy above, sell below the reference price")
    tick_size: float = Field(0.01, gt=0.0)
    order_ref_prefix: str = Field("cmdr-", min_length=1)


class RiskLimits(_Doc):
    max_instrument_exposure: Fraction = Field(1.0, description="|notional| per instrument / net liquidation")
    max_gross_exposure: float = Field(1.0, gt=0.0, description="Σ|notional| / net liquidation")
    allow_short: bool = False
    min_order_quantity: int = Field(1, ge=1)
    min_order_notional: float = Field(0.0, ge=0.0)
    rebalance_threshold: Fraction = Field(0.0, description="skip trades smaller than this fraction of the target")
    max_order_notional: Optional[float] = Field(None, gt=0.0)
    max_orders_per_run: Optional[int] = Field(None, ge=0)
    margin_multiplier: float = Field(1.0, gt=0.0)


class Approval(_Doc):
    notional: Optional[float] = Field(None, gt=0.0)
    fraction_of_nav: Optional[Fraction] = None


class CommonConfig(_Doc):
    tradingEnabled: bool = False
    tradingState: Literal["active", "reduce_only", "halted"] = "active"
    exposure: Exposure = Exposure()
    orders: OrderDefaults = OrderDefaults()
    risk: RiskLimits = RiskLimits()
    approval: Approval = Approval()
    freshMinutes: Optional[float] = Field(None, gt=0.0)
    order_rate_per_second: float = Field(20.0, gt=0.0, le=50.0)
    ack_timeout_seconds: float = Field(30.0, gt=0.0)
    # `correct`: the account converges to the strategies' target (manual trades are corrected);
    # `respect`: the manual part (holding − the Commander's own book) is kept, manual orders left alone.
    manual_trades: Literal["correct", "respect"] = "correct"
    manual_trades_by_symbol: dict[str, Literal["correct", "respect"]] = {}


class ModeConfig(_Doc):
    account: Optional[str] = None


# ---- strategies/{id} and strategies/{id}/intent/latest --------------------------------------------
class RiskParameters(_Doc):
    max_drawdown: Optional[Fraction] = None
    max_single_position_exposure: Fraction = 1.0


class StrategyConfig(_Doc):
    name: str
    description: str = ""
    enabled: bool = False
    author: str = ""
    capital_allocation: float = Field(ge=0.0)
    risk_parameters: RiskParameters = RiskParameters()
    notebook: Optional[str] = None
    parameters: dict[str, Any] = {}
    halted: bool = False
    halted_reason: Optional[str] = None
    # Market data (lib.data): the symbols whose daily bars the pipeline brings up to date before the
    # strategy runs, and how many sessions it reads.
    universe: list[Annotated[str, Field(pattern=r"^[A-Z0-9][A-Z0-9 ._\-]{0,23}$")]] = []
    lookback: Optional[Annotated[int, Field(ge=1, le=20_000)]] = None


#: IB's own security types (TWS API Contract.secType); anything else is a typo, refused with the field named.
SEC_TYPES = Literal["STK", "OPT", "FUT", "CONTFUT", "CASH", "BOND", "CFD", "FOP", "WAR", "IOPT", "FWD", "BAG",
                    "IND", "BILL", "FUND", "FIXED", "SLB", "NEWS", "CMDTY", "BSK", "ICU", "ICS", "CRYPTO"]


@with_config(ConfigDict(extra="forbid", allow_inf_nan=False))
class TargetPosition(TypedDict):
    """One target row. A TypedDict rather than a model: intents can hold thousands of rows and the
    Commander validates every one on each run (pydantic-core validates dicts ~3x faster)."""
    symbol: Annotated[str, Field(min_length=1)]
    secType: NotRequired[SEC_TYPES]
    exchange: NotRequired[str]
    primaryExchange: NotRequired[str]  # descriptive, not part of the instrument key
    conId: NotRequired[Annotated[int, Field(ge=0)]]  # IB's contract id: descriptive, not part of the key
    currency: NotRequired[str]
    lastTradeDateOrContractMonth: NotRequired[str]
    strike: NotRequired[float]
    right: NotRequired[str]
    multiplier: NotRequired[str]
    quantity: NotRequired[Optional[Annotated[int, Field(strict=True)]]]  # signed whole shares
    weight: NotRequired[Optional[float]]  # signed fraction of the strategy's capital
    price: NotRequired[Optional[Annotated[float, Field(gt=0.0)]]]  # reference price
    contract_details: NotRequired[Optional[dict[str, Any]]]


class Intent(_Doc):
    updated_at: Timestamp
    status: Literal["success", "error"]
    error_message: Optional[str] = None
    metadata: dict[str, Any] = {}
    target_positions: list[TargetPosition] = []

    def check(self, path: str) -> None:
        """Rules across fields of a row: exactly one of quantity and weight."""
        for i, row in enumerate(self.target_positions):
            if (row.get("quantity") is None) == (row.get("weight") is None):
                raise DocumentError(path, f"target_positions[{i}]",
                                    "give exactly one of 'quantity' (shares) or 'weight' (fraction of capital)")


# ---- positions/{mode}/portfolio/latest ----------------------------------------------------------
class Holding(_Loose):
    symbol: str = Field(min_length=1)
    secType: str = "STK"
    currency: str = "USD"
    lastTradeDateOrContractMonth: str = ""
    strike: float = 0.0
    right: str = ""
    multiplier: str = ""
    quantity: float
    market_price: Optional[float] = Field(None, gt=0.0)
    market_value: Optional[float] = None


class OpenOrder(_Loose):
    orderId: int
    permId: int = 0
    clientId: int = 0
    symbol: str = Field(min_length=1)
    secType: str = "STK"
    currency: str = "USD"
    lastTradeDateOrContractMonth: str = ""
    strike: float = 0.0
    right: str = ""
    multiplier: str = ""
    action: Literal["BUY", "SELL"]
    totalQuantity: float = Field(ge=0.0)
    remaining: Optional[float] = Field(None, ge=0.0)
    orderType: str = "MKT"
    lmtPrice: Optional[float] = None
    orderRef: str = ""
    status: str = "Submitted"
    # Contingency (issue 12): a stop's trigger price, a bracket child's parent, an OCA group, IB order
    # conditions. Defaults keep snapshots written before these fields loadable.
    auxPrice: Optional[float] = None
    parentId: int = Field(0, ge=0)
    ocaGroup: str = ""
    conditions: list[Any] = []

    @field_validator("parentId", "ocaGroup", "conditions", mode="before")
    @classmethod
    def _none_is_unset(cls, value: Any, info) -> Any:
        """None (as some writers store an unset field) means the default."""
        if value is None:
            return {"parentId": 0, "ocaGroup": "", "conditions": []}[info.field_name]
        return value


class PortfolioSnapshot(_Doc):
    updated_at: Timestamp
    account: str = Field(min_length=1)
    net_liquidation: float = Field(gt=0.0)
    available_funds: float
    holdings: list[Holding] = []
    open_orders: list[OpenOrder] = []
    # Every notional is in the account's base currency; prices stay in each instrument's currency and
    # are converted with `fx_rates` (currency → value of one unit in the base currency). Snapshots
    # without them (older ones) are read as one-currency accounts: no conversion.
    base_currency: Optional[str] = Field(None, min_length=3, max_length=3)
    fx_rates: Optional[dict[str, Annotated[float, Field(gt=0.0)]]] = None


# ---- executions/{id} ----------------------------------------------------------------------------
class ExecutionRecord(_Loose):
    execution_id: str
    executed_at: Timestamp
    mode: Literal["paper", "live"]
    trigger: Literal["scheduled", "manual", "approval", "replay"] = "manual"
    status: Literal["completed", "partial_success", "failed", "dry_run", "disabled", "awaiting_approval",
                    "approving", "placing", "uncertain", "interrupted"]
    summary: str = ""
    placed_orders: bool = False
    context: dict[str, Any] = {}
    inputs: Optional[dict[str, Any]] = None
    decision: Optional[dict[str, Any]] = None
    orders_placed: list[dict[str, Any]] = []
    notebooks: list[str] = []


M = TypeVar("M", bound=BaseModel)


def describe(error: ValidationError) -> tuple[str, str]:
    """The first problem in a ValidationError as (field path like 'target_positions[0].price', message)."""
    first = error.errors()[0]
    parts: list[str] = []
    for loc in first["loc"]:
        if isinstance(loc, int):
            parts.append(f"[{loc}]")
        else:
            parts.append(("." if parts else "") + str(loc))
    field = "".join(parts)
    msg = first["msg"]
    if first["type"] == "missing":
        msg = "is required but missing"
    elif first["type"] == "extra_forbidden":
        msg = "is not a known field (a typo?)"
    return field, msg


def load(model: type[M], path: str, data: Any, check: bool = True) -> M:
    """Validate `data` as `model`; raise DocumentError naming `path` and the offending field.

    `check=False` skips the cross-field rules of `model.check` for a caller that applies them itself.
    """
    if data is None:
        raise DocumentError(path, None, "document is missing")
    if not isinstance(data, dict):
        raise DocumentError(path, None, f"expected a mapping, got {type(data).__name__}")
    try:
        doc = model.model_validate(data)
    except ValidationError as exc:
        field, msg = describe(exc)
        raise DocumentError(path, field or None, msg) from None
    rules = getattr(doc, "check", None) if check else None
    if rules is not None:
        rules(path)
    return doc


def dump(doc: BaseModel) -> dict[str, Any]:
    """A model as a bus document (datetimes stay datetimes; None fields kept so documents are explicit)."""
    return doc.model_dump(mode="python")


# ---- paths (DESIGN.md §4) -----------------------------------------------------------------------
def common_config_path() -> str:
    return "config/common"


def mode_config_path(mode: str) -> str:
    return f"config/{mode}"


def strategy_path(strategy_id: str) -> str:
    return f"strategies/{strategy_id}"


def intent_path(strategy_id: str) -> str:
    return f"strategies/{strategy_id}/intent/latest"


def ledger_path(strategy_id: str) -> str:
    return f"strategies/{strategy_id}/ledger/latest"


def portfolio_path(mode: str) -> str:
    return f"positions/{mode}/portfolio/latest"


def execution_path(execution_id: str) -> str:
    return f"executions/{execution_id}"


def lock_path(mode: str) -> str:
    return f"locks/commander-{mode}"
