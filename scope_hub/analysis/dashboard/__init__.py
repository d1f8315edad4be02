"""Static HTML feature dashboards (``scope-hub dashboard``): collect, compute effects, render.

Example:
    >>> from scope_hub.analysis.dashboard import dashboard_from_texts, FeatureCollector  # doctest: +SKIP
"""

from scope_hub.analysis.dashboard.build import (
    dashboard_from_arrays,
    dashboard_from_harvest,
    dashboard_from_texts,
    harvest_windows,
)
from scope_hub.analysis.dashboard.collect import (
    CollectedStats,
    FeatureCollector,
    collect_from_arrays,
)
from scope_hub.analysis.dashboard.effects import logit_effects, nearest_features
from scope_hub.analysis.dashboard.render import DashboardSummary, dashboard_summary, write_dashboard

__all__ = [
    "CollectedStats",
    "DashboardSummary",
    "FeatureCollector",
    "collect_from_arrays",
    "dashboard_from_arrays",
    "dashboard_from_harvest",
    "dashboard_from_texts",
    "dashboard_summary",
    "harvest_windows",
    "logit_effects",
    "nearest_features",
    "write_dashboard",
]
