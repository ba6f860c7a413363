#!/usr/bin/env python3
"""Writes Sluice's Grafana dashboards: `sluice-overview.json` and `sluice-operations.json`
here, and the same files into the Helm chart (`helm/sluice/dashboards/`), which ships them
as a ConfigMap for Grafana's dashboard sidecar.

The JSON is generated so that every panel is built the same way (datasource variable,
node and provider filters, units, legends) and checked in so that it can be imported by
hand; `tests/test_dashboards.py` fails when the checked-in files differ from what this
script writes, when a panel's query names a metric Sluice does not export, or when a
query does not evaluate on a real Prometheus. Run: `python3 deploy/dashboards/generate.py`.

Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHART_COPY = HERE.parent.parent / "helm" / "sluice" / "dashboards"

DS = {"type": "prometheus", "uid": "${datasource}"}
# Every selector filters on the node and, where the series has one, the provider.
NODE = 'instance=~"$node"'
NODE_PROVIDER = 'instance=~"$node", provider=~"$provider"'
RATE = "$__rate_interval"
ALL = {"text": "All", "value": "$__all"}


def variables(with_provider: bool) -> list[dict]:
    out = [
        {"type": "datasource", "name": "datasource", "label": "Data source",
         "query": "prometheus", "current": {"text": "default", "value": "default"}, "hide": 0,
         "refresh": 1, "options": []},
        {"type": "query", "name": "node", "label": "Node", "datasource": DS,
         "query": "label_values(sluice_requests_total, instance)",
         "definition": "label_values(sluice_requests_total, instance)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1,
         "current": ALL, "options": []},
    ]
    if with_provider:
        out.append(
            {"type": "query", "name": "provider", "label": "Provider", "datasource": DS,
             "query": 'label_values(sluice_requests_total{instance=~"$node"}, provider)',
             "definition": 'label_values(sluice_requests_total{instance=~"$node"}, provider)',
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1,
             "current": ALL, "options": []})
    return out


class Layout:
    """Places panels left to right, `width` of 24 columns each, rows of `height`."""

    def __init__(self):
        self.x = self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> dict:
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def targets(queries: list[tuple[str, str]]) -> list[dict]:
    return [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend,
             "editorMode": "code", "range": True}
            for i, (expr, legend) in enumerate(queries)]


def timeseries(layout: Layout, title: str, description: str, unit: str,
               queries: list[tuple[str, str]], w: int = 12, h: int = 8, stack: bool = False) -> dict:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
              "spanNulls": True}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return {
        "type": "timeseries", "id": layout.id(), "title": title, "description": description,
        "datasource": DS, "gridPos": layout.place(w, h), "targets": targets(queries),
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                               "calcs": ["mean", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(layout: Layout, title: str, description: str, unit: str, expr: str,
         w: int = 6, h: int = 4, thresholds: list[tuple[float | None, str]] | None = None) -> dict:
    steps = [{"value": v, "color": c} for v, c in (thresholds or [(None, "green")])]
    return {
        "type": "stat", "id": layout.id(), "title": title, "description": description,
        "datasource": DS, "gridPos": layout.place(w, h), "targets": targets([(expr, title)]),
        "fieldConfig": {"defaults": {"unit": unit,
                                     "thresholds": {"mode": "absolute", "steps": steps}},
                        "overrides": []},
        "options": {"graphMode": "area", "colorMode": "value", "justifyMode": "auto",
                    "textMode": "auto", "wideLayout": True, "showPercentChange": False,
                    "percentChangeColorMode": "standard", "orientation": "auto",
                    "reduceOptions": {"calcs": ["lastNotNull"], "values": False}},
    }


def quantile(q: float, metric: str, selector: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


def dashboard(uid: str, title: str, description: str, panels: list[dict], provider: bool) -> dict:
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["sluice", "llm", "ai-governance"], "timezone": "browser", "editable": True,
        "graphTooltip": 1, "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": [{"name": "Annotations & Alerts", "enable": True, "hide": True,
                                  "iconColor": "rgba(0, 211, 255, 1)", "builtIn": 1,
                                  "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "type": "dashboard"}]},
        "templating": {"list": variables(provider)},
        "links": [], "panels": panels,
    }


def overview() -> dict:
    L = Layout()
    panels = [
        stat(L, "Requests / s", "Governed interactions per second, all outcomes.", "reqps",
             f"sum(rate(sluice_requests_total{{{NODE_PROVIDER}}}[{RATE}]))"),
        stat(L, "Error ratio", "Interactions that did not succeed, of all.", "percentunit",
             f"sum(rate(sluice_errors_total{{{NODE_PROVIDER}}}[{RATE}])) / "
             f"sum(rate(sluice_requests_total{{{NODE_PROVIDER}}}[{RATE}]))",
             thresholds=[(None, "green"), (0.02, "orange"), (0.1, "red")]),
        stat(L, "Spend over the range (USD)", "Priced spend in the selected time range.",
             "currencyUSD",
             f"sum(increase(sluice_cost_usd_total{{{NODE_PROVIDER}}}[$__range]))"),
        stat(L, "Blocked / s", "Requests refused by a policy.", "reqps",
             f'sum(rate(sluice_policy_decisions_total{{{NODE}, decision="block"}}[{RATE}]))',
             thresholds=[(None, "green"), (0.1, "orange")]),
        timeseries(L, "Requests by provider and outcome", "Interactions per second.", "reqps",
                   [(f"sum by (provider, outcome) (rate(sluice_requests_total{{{NODE_PROVIDER}}}[{RATE}]))",
                     "{{provider}} {{outcome}}")], stack=True),
        timeseries(L, "Errors by provider and kind", "Interactions that failed, were refused or cut.",
                   "reqps",
                   [(f"sum by (provider, kind) (rate(sluice_errors_total{{{NODE_PROVIDER}}}[{RATE}]))",
                     "{{provider}} {{kind}}")]),
        timeseries(L, "Tokens by provider and model", "Input and output tokens per second; "
                   "`other` is a model the price table does not list.", "short",
                   [(f"sum by (provider, model, direction) (rate(sluice_tokens_total{{{NODE_PROVIDER}}}[{RATE}]))",
                     "{{provider}} {{model}} {{direction}}")], stack=True),
        timeseries(L, "Spend by provider and model (USD / hour)", "From the price table.",
                   "currencyUSD",
                   [(f"sum by (provider, model) (rate(sluice_cost_usd_total{{{NODE_PROVIDER}}}[{RATE}])) * 3600",
                     "{{provider}} {{model}}")], stack=True),
        timeseries(L, "Added latency (Sluice itself)", "Time spent in Sluice per interaction, "
                   "beside the provider's own latency.", "s",
                   [(quantile(0.5, "sluice_added_latency_seconds", NODE), "p50"),
                    (quantile(0.99, "sluice_added_latency_seconds", NODE), "p99")]),
        timeseries(L, "Upstream latency by provider", "The provider's answer time.", "s",
                   [(quantile(0.5, "sluice_upstream_latency_seconds", NODE_PROVIDER, "provider"),
                     "{{provider}} p50"),
                    (quantile(0.99, "sluice_upstream_latency_seconds", NODE_PROVIDER, "provider"),
                     "{{provider}} p99")]),
        timeseries(L, "Time to first token by provider", "Streamed answers: request to first byte.",
                   "s",
                   [(quantile(0.5, "sluice_time_to_first_token_seconds", NODE_PROVIDER, "provider"),
                     "{{provider}} p50"),
                    (quantile(0.95, "sluice_time_to_first_token_seconds", NODE_PROVIDER, "provider"),
                     "{{provider}} p95")]),
        timeseries(L, "Policy decisions", "allow, redact, block, and shadow decisions.", "reqps",
                   [(f"sum by (decision) (rate(sluice_policy_decisions_total{{{NODE}}}[{RATE}]))",
                     "{{decision}}")], stack=True),
        timeseries(L, "Top reason codes", "The ten reason codes seen most in the range.", "short",
                   [(f"topk(10, sum by (reason) (increase(sluice_policy_reasons_total{{{NODE}}}[$__range])))",
                     "{{reason}}")]),
        timeseries(L, "Budgets nearest exhaustion", "Highest spend this period over each "
                   "budget's cap (per-identity budgets: the identity nearest it); 100% is exhausted.",
                   "percentunit",
                   [(f"topk(10, max by (budget, period) (sluice_budget_utilisation_ratio{{{NODE}}}))",
                     "{{budget}} ({{period}})")]),
        timeseries(L, "Guardrail findings by category", "PII, secrets and prompt injection found.",
                   "short",
                   [(f"sum by (category) (rate(sluice_guardrail_findings_total{{{NODE}}}[{RATE}]))",
                     "{{category}}")]),
    ]
    return dashboard("sluice-overview", "Sluice / Overview",
                     "AI traffic through Sluice: requests, errors, tokens, spend, latency, decisions.",
                     panels, provider=True)


def operations() -> dict:
    L = Layout()
    panels = [
        stat(L, "Redirected / s", "Connections the eBPF redirect sent to the proxy.", "cps",
             f'sum(rate(sluice_redirect_events_total{{{NODE}, event="redirected"}}[{RATE}]))'),
        stat(L, "Fail-open / s", "Provider connections that went direct, unaudited, while the "
             "proxy was down.", "cps",
             f'sum(rate(sluice_redirect_events_total{{{NODE}, event="fail_open"}}[{RATE}]))',
             thresholds=[(None, "green"), (0.001, "red")]),
        stat(L, "Ledger append errors / s", "Records that could not be written.", "ops",
             f"sum(rate(sluice_ledger_append_errors_total{{{NODE}}}[{RATE}]))",
             thresholds=[(None, "green"), (0.001, "red")]),
        stat(L, "Record queue depth", "Connection and admin records waiting for the ledger.",
             "short", f"max(sluice_record_queue_depth{{{NODE}}})",
             thresholds=[(None, "green"), (4096, "orange"), (7000, "red")]),
        timeseries(L, "Redirect events", "Connect-hook decisions, fail_open and quic_refused "
                   "included.", "cps",
                   [(f"sum by (event) (rate(sluice_redirect_events_total{{{NODE}}}[{RATE}]))",
                     "{{event}}")]),
        timeseries(L, "Connections refused by reason", "Captured connections Sluice refused "
                   "(unknown SNI, no destination, loop, …).", "cps",
                   [(f"sum by (reason) (rate(sluice_connections_refused_total{{{NODE}}}[{RATE}]))",
                     "{{reason}}")]),
        timeseries(L, "Ledger appends by kind", "Records appended per second.", "ops",
                   [(f"sum by (kind) (rate(sluice_ledger_records_total{{{NODE}}}[{RATE}]))",
                     "{{kind}}")], stack=True),
        timeseries(L, "Ledger index lag and record queue", "Records not yet indexed; records "
                   "waiting for the ledger.", "short",
                   [(f"max by (instance) (sluice_ledger_index_lag{{{NODE}}})", "index lag {{instance}}"),
                    (f"max by (instance) (sluice_record_queue_depth{{{NODE}}})", "queue {{instance}}")]),
        timeseries(L, "Certificate cache", "Leaf certificates served from the cache or minted.",
                   "ops",
                   [(f"sum by (result) (rate(sluice_cert_cache_total{{{NODE}}}[{RATE}]))",
                     "{{result}}")]),
        timeseries(L, "TLS handshakes by result", "Client handshakes with Sluice.", "ops",
                   [(f"sum by (result) (rate(sluice_tls_handshakes_total{{{NODE}}}[{RATE}]))",
                     "{{result}}")]),
        timeseries(L, "Requests in flight by provider", "Requests being served; streams count "
                   "until their last byte.", "short",
                   [(f"sum by (provider) (sluice_requests_in_flight{{{NODE}}})", "{{provider}}")]),
        timeseries(L, "Requests per node", "Interactions per second on each node.", "reqps",
                   [(f"sum by (instance) (rate(sluice_requests_total{{{NODE}}}[{RATE}]))",
                     "{{instance}}")]),
        timeseries(L, "Checkpoints and witness lag", "Signed checkpoints written; how far each "
                   "witness is behind.", "s",
                   [(f"max by (witness) (sluice_ledger_witness_lag_seconds{{{NODE}}})", "lag {{witness}}")]),
        timeseries(L, "Shared counter store", "Fleet budgets and rate limits in Redis: whether "
                   "each node reaches it, and its round trip on the request path (p99).", "short",
                   [(f"max by (instance) (sluice_counter_store_up{{{NODE}}})", "up {{instance}}"),
                    (f"histogram_quantile(0.99, sum by (le, op) (rate(sluice_counter_store_seconds_bucket{{{NODE}}}[{RATE}])))",
                     "p99 s {{op}}")]),
        timeseries(L, "Central ledger lag", "Records of each node not yet in the fleet's "
                   "central ledger (PostgreSQL); 0 when caught up or not configured.", "short",
                   [(f"max by (instance) (sluice_central_lag_records{{{NODE}}})", "{{instance}}")]),
        timeseries(L, "SIEM sinks", "Records each sink has not delivered yet (its cursor behind "
                   "the ledger), and records its destination rejected into the dead-letter file.",
                   "short",
                   [(f"max by (instance, sink) (sluice_sink_lag_records{{{NODE}}})", "lag {{sink}} {{instance}}"),
                    (f"sum by (sink) (increase(sluice_sink_dead_letters_total{{{NODE}}}[1h]))", "dead letters/h {{sink}}")]),
        timeseries(L, "Security alerts firing", "Alerts raised by the rules over the records "
                   "and not yet resolved, by rule (`sluice alerts list` on the node).", "short",
                   [(f"sum by (rule) (sluice_alerts_firing{{{NODE}}})", "{{rule}}")]),
    ]
    return dashboard("sluice-operations", "Sluice / Operations",
                     "The machinery: redirect, refusals, ledger, certificates, nodes, witnesses.",
                     panels, provider=False)


def render() -> dict[str, str]:
    return {f"{d['uid']}.json": json.dumps(d, indent=2, sort_keys=True) + "\n"
            for d in (overview(), operations())}


def main() -> int:
    CHART_COPY.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        for d in (HERE, CHART_COPY):
            (d / name).write_text(text)
    print(f"wrote {', '.join(render())} to {HERE} and {CHART_COPY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
