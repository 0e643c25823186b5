//! The OpenAPI spec says exactly what the server does: schemathesis (installed by
//! `scripts/peers.sh install`) generates requests from the served spec, valid and invalid, and
//! checks every answer's status, headers, content type and body against it.

mod common;

use std::process::Command;

fn schemathesis() -> String {
    std::env::var("SGTEST_SCHEMATHESIS").unwrap_or_else(|_| {
        let home = std::env::var("HOME").expect("HOME");
        format!("{home}/.cache/snowgate/contract-venv/bin/st")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_matches_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    // The gateway as deployed: closed, with an operator key that every generated request carries
    // (schemathesis also checks that a request without it is refused, as the spec says).
    let created = Command::new(env!("CARGO_BIN_EXE_snowgate"))
        .args(["keys", "create", "--operator", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let key = String::from_utf8(created.stdout).unwrap().lines().last().unwrap().to_string();
    let (command, base) = common::gateway_command(dir.path());
    let mut gateway = common::start_gateway(command, &base).await;
    // One real table, so that generated requests reach past "no such table" now and then.
    let declared = reqwest::Client::new()
        .put(format!("{base}/v1/tables/loans"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"columns": [{"name": "id", "type": "NUMBER", "nullable": false}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 201);

    let report = dir.path().join("report");
    let run = tokio::task::spawn_blocking({
        let (base, report, key) = (base.clone(), report.clone(), key.clone());
        move || {
            // Written out at run time: a compile-time path would point into whichever checkout
            // built this binary (the target folder is shared).
            let config = report.with_extension("toml");
            std::fs::write(&config, include_str!("contract/schemathesis.toml")).unwrap();
            Command::new(schemathesis())
                .current_dir(report.parent().unwrap())
                .arg("--config-file")
                .arg(&config)
                .args(["run", &format!("{base}/openapi.json"), "--checks", "all", "--max-examples", "30"])
                .args(["--header", &format!("Authorization: Bearer {key}")])
                // One worker: with two, hypothesis's threads parse lambda sources at once and
                // CPython 3.11 can raise "AST constructor recursion depth mismatch" in the
                // tool itself (seen once in CI, a runtime error rather than a contract finding).
                .args(["--seed", "20261125", "--workers", "1", "--generation-database", "none", "--no-color"])
                // A busy CI machine must not fail the run through hypothesis's speed check.
                .args(["--suppress-health-check", "too_slow", "--request-timeout", "30"])
                .arg("--report-dir")
                .arg(&report)
                .output()
                .expect("schemathesis runs (scripts/peers.sh install puts it in place)")
        }
    })
    .await
    .unwrap();
    let _ = Command::new("kill").args(["-TERM", &gateway.id().to_string()]).status();
    let _ = gateway.wait();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    // The summary's last lines (generated cases, warnings), shown with `--no-capture`.
    let lines: Vec<&str> = stdout.lines().collect();
    println!("{}", lines[lines.len().saturating_sub(12)..].join("\n"));
    assert!(run.status.success(), "schemathesis found contract failures:\n{stdout}\n{stderr}");
    assert!(stdout.contains("passed"), "no test cases ran:\n{stdout}");
}
