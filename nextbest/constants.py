"""Names of the domain, defined once (column names, defaults, seeds).

Every other module imports these instead of spelling the strings again, so a rename
is one edit and a typo is an ImportError rather than a silent empty column.
"""

from __future__ import annotations

# Columns of the canonical tables.
CUSTOMER_ID = "customer_id"
SNAPSHOT_DATE = "snapshot_date"
PRODUCT_ID = "product_id"
EVENT_TIMESTAMP = "event_timestamp"
# Footer key of a feature file: its rows per customer part, in file order (JSON list), as the build wrote them.
FEATURE_PARTS_KEY = "nextbest.parts"

# Defaults shared by the CLI, training and serving.
DEFAULT_SEED = 42
DEFAULT_K = 3
MAX_K = 10
DEFAULT_PORT = 3000
DEFAULT_WORKDIR = ".nextbest"
WORKDIR_ENV = "NEXTBEST_HOME"
PROJECT_ENV = "NEXTBEST_PROJECT"
PROJECT_FILE = "nextbest.yaml"
MLFLOW_URI_ENV = "NEXTBEST_MLFLOW_URI"
# Serve these checkpoints (one folder per model, pinned.json their versions) instead of the registry's champions.
MODELS_DIR_ENV = "NEXTBEST_MODELS_DIR"
# Set ("1") when the service may start before champion models exist and loads them once registered.
WAIT_FOR_MODELS_ENV = "NEXTBEST_WAIT_FOR_MODELS"

CHANNELS = ("mobile_app", "web", "email", "push", "sms", "branch", "call_center")

# Feast names: one FeatureService per model, used by name in training and serving.
ENTITY_NAME = "customer"
NBP_FEATURE_SERVICE = "next_best_product_v1"
CHURN_FEATURE_SERVICE = "churn_v2"  # v1 without the products held: still applied, not trained on
CHURN_FEATURE_SERVICE_V1 = "churn_v1"
OFFER_CONTEXT_FEATURE_SERVICE = "offer_context_v1"
REQUEST_CONTEXT_VIEW = "request_context"
DIGITAL_CHANNELS = ("mobile_app", "web", "email", "push")
# Short-term context written online by `POST /events` (epoch seconds for `*_at`).
REALTIME_VIEW = "customer_realtime"
REALTIME_PUSH_SOURCE = "customer_realtime_push"
REALTIME_FEATURES = ("last_salary_amount", "last_salary_at", "last_deposit_amount", "last_deposit_at",
                     "last_loan_product", "last_loan_at", "last_page_view_product", "last_page_view_at")

# MLflow registry.
NBP_MODEL_NAME = "nbp"
CHURN_MODEL_NAME = "churn"
CHAMPION_ALIAS = "champion"

# Lifecycle states of the canonical customers table.
STATUSES = ("prospect", "active", "dormant", "former")
