//! The monitoring files use only what the gateway exports: every expression of the alert rules
//! (`monitoring/alerts.yml`, and the same groups in `k8s/monitoring/prometheusrule.yaml`) and of
//! the Grafana dashboard parses as PromQL, and every metric it names is one a live gateway's
//! `/metrics` declares. The alerts the operators asked for exist, and the ServiceMonitor scrapes
//! the port and path the gateway serves.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use promql_parser::parser::{Expr, VectorSelector};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::{json, Value};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Sample names a scrape can carry, from its `# TYPE` lines: a counter `x` is sampled as
/// `x_total`, a histogram as `x_bucket`, `x_sum` and `x_count`, a gauge as itself.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => names.extend([format!("{name}_total"), format!("{name}_created")]),
            "histogram" => names.extend(["_bucket", "_sum", "_count", "_created"].map(|s| format!("{name}{s}"))),
            _ => drop(names.insert(name.to_string())),
        }
    }
    names
}

/// The metric names an expression selects.
struct Names(BTreeSet<String>);

impl ExprVisitor for Names {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector: Option<&VectorSelector> = match expr {
            Expr::VectorSelector(vs) => Some(vs),
            Expr::MatrixSelector(ms) => Some(&ms.vs),
            _ => None,
        };
        if let Some(vs) = selector {
            self.0.insert(vs.name.clone().ok_or_else(|| format!("a selector without a metric name: {vs}"))?);
        }
        Ok(true)
    }
}

/// Parses `expr` and returns the metric names it uses; panics naming `origin` if it does not parse.
fn metric_names(origin: &str, expr: &str) -> BTreeSet<String> {
    let parsed = promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{origin}: {expr:?} is not PromQL: {e}"));
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &parsed).unwrap_or_else(|e| panic!("{origin}: {e}"));
    names.0
}

/// A scrape of a gateway that loaded one batch with a reject and refused one over its quota, so
/// that every labelled family has a series (a family without one is not in the exposition).
async fn scrape() -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    let quota = snowgate::config::Quota { records_per_sec: 100.0, burst_secs: 1.0, ..Default::default() };
    config.quotas.partners.insert("anonymous".into(), quota);
    let app = common::spawn_app_with(config).await;
    app.declare_loans().await;
    let mut records: Vec<Value> = (0..10).map(common::loan).collect();
    records[3]["amount"] = json!("n/a");
    let response = app.post_json("loans", &json!(records)).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_final(&id, Duration::from_secs(60)).await["status"], "loaded");
    // 500 records take the partner's bucket (100) into debt: the next request is refused.
    let many: Vec<Value> = (0..500).map(common::loan).collect();
    assert_eq!(app.post_json("loans", &json!(many)).await.status(), 202);
    assert_eq!(app.post_json("loans", &json!(records)).await.status(), 429);
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    app.shutdown().await;
    text
}

#[tokio::test]
async fn rules_and_dashboard_use_only_exported_metrics() {
    let exported = exported(&scrape().await);
    assert!(exported.contains("snowgate_records_rejected_total"), "{exported:?}");
    assert!(exported.contains("snowgate_load_delay_seconds_bucket"), "{exported:?}");

    // The compose file's rules and the PrometheusRule's are the same groups.
    let rules = yaml("monitoring/alerts.yml");
    let operator = yaml("k8s/monitoring/prometheusrule.yaml");
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(operator["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        operator["spec"]["groups"], rules["groups"],
        "k8s/monitoring/prometheusrule.yaml and monitoring/alerts.yml differ"
    );

    let mut alerts = BTreeSet::new();
    let mut checked = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"].as_str().unwrap();
            for metric in metric_names(name, expr) {
                assert!(exported.contains(&metric), "alert {name} uses {metric}, which the gateway does not export");
                checked += 1;
            }
            assert!(rule["labels"]["severity"].as_str().is_some(), "{name} has a severity");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name} has a summary");
            alerts.insert(name.to_string());
        }
    }
    for wanted in [
        "SnowgatePartnerErrorRateHigh",
        "SnowgateFreshnessOverSla",
        "SnowgateBacklogGrowing",
        "SnowgateThroughputUnderFloor",
        "SnowgateLoaderDown",
        "SnowgateLoadSlow",
    ] {
        assert!(alerts.contains(wanted), "no alert {wanted}: {alerts:?}");
    }

    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("monitoring/grafana-dashboard.json")).unwrap())
            .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title} queries nothing");
        for target in targets {
            for metric in metric_names(title, target["expr"].as_str().unwrap()) {
                assert!(exported.contains(&metric), "panel {title} uses {metric}, which the gateway does not export");
                checked += 1;
            }
        }
    }
    assert!(checked > 30, "only {checked} metric references checked");

    // The check fails on a name the gateway does not export.
    let typo = metric_names("typo", "sum(rate(snowgate_records_rejectd_total[5m]))");
    assert!(typo.iter().any(|m| !exported.contains(m)));
}

#[test]
fn the_service_monitor_scrapes_the_gateway() {
    let monitor = yaml("k8s/monitoring/servicemonitor.yaml");
    assert_eq!(monitor["kind"], "ServiceMonitor");
    let service = yaml("k8s/base/service.yaml");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"], "scrapes the Service's named port");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        service["spec"]["selector"]["app.kubernetes.io/name"]
    );
    let kustomization = yaml("k8s/monitoring/kustomization.yaml");
    let listed: Vec<&str> =
        kustomization["resources"].as_sequence().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert_eq!(listed, ["servicemonitor.yaml", "prometheusrule.yaml"]);
    let production = yaml("k8s/overlays/production/kustomization.yaml");
    assert_eq!(production["components"][0], "../../monitoring", "production includes the monitoring");
    // docker-compose's Prometheus loads the same rules and scrapes both replicas.
    let prometheus = yaml("monitoring/prometheus.yml");
    assert_eq!(prometheus["rule_files"][0], "/etc/prometheus/alerts.yml");
    assert_eq!(prometheus["scrape_configs"][0]["metrics_path"], "/metrics");
    assert_eq!(prometheus["scrape_configs"][0]["static_configs"][0]["targets"].as_sequence().unwrap().len(), 2);
}
