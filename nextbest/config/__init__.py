"""Typed configuration loaded from the project's `configs/*.yaml` (or the package defaults, see
`nextbest.settings.config_file`); nothing is read at import time.

Each config family has one module, and every schema has one home: `catalogue` (products.yaml),
`segments` (segments.yaml), `policy` (rules.yaml and bandit.yaml, the `Channel` type),
`training` (nbp.yaml, churn.yaml, campaign.yaml), `campaigns`
(campaigns.yaml: outbound campaigns), `features` (features.yaml: the bank's own feature
tables), `monitoring` (monitoring.yaml), `project`
(nextbest.yaml and `validate_all`), `loading` (YAML into a model, `ConfigError`). Import them from
here: `from nextbest.config import Catalogue, load_catalogue`.
"""

from nextbest.config.campaigns import (Audience, CampaignPlan, CampaignsConfig, ChannelPlan, Window,
                                       load_campaigns)
from nextbest.config.catalogue import Catalogue, Category, Eligibility, Product, load_catalogue
from nextbest.config.features import BankTable, FeaturesConfig, SqlSource, load_features_config
from nextbest.config.loading import ConfigError, validated
from nextbest.config.monitoring import (CATEGORICAL_METHODS, NUMERICAL_METHODS, ColumnRule, FeatureSection,
                                        GateSection, KpiSection, MonitoringConfig, OutcomeSection, PredictionSection,
                                        ServingSection, UpliftSection, load_monitoring)
from nextbest.config.policy import (GLOBAL_HOLDOUT, Action, BanditConfig, BanditPrior, Campaign, Channel,
                                    ColdStartConfig, CreditCooldown, HoldoutConfig, Levers, RetentionConfig,
                                    RulesConfig, Trigger, load_bandit, load_rules)
from nextbest.config.project import CONFIG_NAMES, ProjectFile, load_project_file, validate_all
from nextbest.config.segments import (Condition, LifecycleConfig, Rule, SegmentGroup, SegmentsConfig, ValueTierConfig,
                                      load_segments)
from nextbest.config.training import TrainConfig, load_train_config

__all__ = [
    "CATEGORICAL_METHODS", "CONFIG_NAMES", "Audience", "CampaignPlan", "CampaignsConfig", "ChannelPlan", "Window",
    "load_campaigns", "GLOBAL_HOLDOUT", "NUMERICAL_METHODS", "Action", "BankTable",
    "BanditConfig", "BanditPrior", "Campaign", "Catalogue", "Category", "Channel", "ColdStartConfig", "ColumnRule",
    "Condition", "ConfigError", "CreditCooldown", "Eligibility", "FeatureSection", "FeaturesConfig", "GateSection",
    "HoldoutConfig", "KpiSection", "Levers", "LifecycleConfig", "MonitoringConfig", "OutcomeSection",
    "PredictionSection", "Product", "ProjectFile", "RetentionConfig", "Rule", "RulesConfig", "SegmentGroup",
    "SegmentsConfig", "ServingSection", "SqlSource", "TrainConfig", "Trigger", "UpliftSection", "ValueTierConfig",
    "load_bandit", "load_catalogue", "load_features_config", "load_monitoring", "load_project_file", "load_rules",
    "load_segments", "load_train_config", "validate_all", "validated",
]
