"""Storage tiering and data integrity: hot, warm and cold tiers with verified moves.

The policy (:mod:`.policy`) says what goes where and when; the catalog (:mod:`.catalog`,
SQLite) knows every file of every run and each copy's state; the mover (:mod:`.mover`) copies,
verifies, archives (BagIt) and deletes without ever losing data; :class:`StorageManager` runs
it all (``gc``, ``scrub``, ``verify``, ``restore``, the tierer thread). See docs/storage.md.
"""

from appliance.storage._fs import Store
from appliance.storage.admission import StorageThrottled, admission_check
from appliance.storage.catalog import Catalog, CatalogError
from appliance.storage.control import control_commands
from appliance.storage.manager import ALERTS, Action, StorageError, StorageManager
from appliance.storage.mover import Mover, MoveError, SharedTokenBucket, SourceCorrupt, TokenBucket, VerifyFailed, shared_bandwidth
from appliance.storage.policy import CLASSES, STATES, TIERS, Policy, PolicyError, StorageSection, classify, load_policy

__all__ = [
    "ALERTS",
    "CLASSES",
    "STATES",
    "TIERS",
    "Action",
    "Catalog",
    "CatalogError",
    "MoveError",
    "Mover",
    "Policy",
    "PolicyError",
    "SharedTokenBucket",
    "SourceCorrupt",
    "StorageError",
    "StorageManager",
    "StorageSection",
    "StorageThrottled",
    "Store",
    "TokenBucket",
    "VerifyFailed",
    "admission_check",
    "classify",
    "control_commands",
    "load_policy",
    "shared_bandwidth",
]
