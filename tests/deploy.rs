//! The deployment files configure the gateway with keys it reads: every `SNOWGATE_*` variable the
//! Dockerfile, docker-compose.yml, the Kubernetes ConfigMaps (base and overlays) and Secret set is
//! loaded by `snowgate check-config`, which refuses unknown keys and invalid values.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// `KEY: "value"` entries of the `data:` or `stringData:` block of a manifest (flat, two-space
/// indented, as the files here are written).
fn manifest_entries(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut entries = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        if line == "data:" || line == "stringData:" {
            inside = true;
            continue;
        }
        if inside && !line.starts_with("  ") {
            inside = false;
        }
        if let Some((key, value)) = line.strip_prefix("  ").filter(|_| inside).and_then(|l| l.split_once(": ")) {
            entries.insert(key.to_string(), value.trim_matches('"').to_string());
        }
    }
    entries
}

/// `KEY=value` pairs of the Dockerfile's `ENV` instructions.
fn dockerfile_env(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap().replace("\\\n", " ");
    text.lines()
        .filter_map(|line| line.strip_prefix("ENV "))
        .flat_map(|rest| rest.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|pair| pair.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

fn check_config(vars: &BTreeMap<String, String>) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_snowgate"))
        .arg("check-config")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn every_variable_the_deployment_files_set_is_a_key_the_gateway_reads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = manifest_entries(&root.join("k8s/base/configmap.yaml"));
    let secret = manifest_entries(&root.join("k8s/base/secret.yaml"));
    assert!(base.contains_key("SNOWGATE_WAREHOUSE__KIND") && secret.contains_key("SNOWGATE_LEDGER__URL"), "{base:?}");
    let mut sets = vec![("Dockerfile", dockerfile_env(&root.join("Dockerfile")))];
    // docker-compose.yml: both gateway replicas, with the image's own variables beneath theirs.
    let mut compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("docker-compose.yml")).unwrap()).unwrap();
    compose.apply_merge().unwrap();
    for replica in ["gateway-1", "gateway-2"] {
        let environment = &compose["services"][replica]["environment"];
        let mut vars = dockerfile_env(&root.join("Dockerfile"));
        for (key, value) in environment.as_mapping().unwrap_or_else(|| panic!("{replica} has no environment")) {
            let value = match value {
                serde_yaml::Value::String(text) => text.clone(),
                other => panic!("{replica}: {key:?} is {other:?}; compose wants strings"),
            };
            vars.insert(key.as_str().unwrap().to_string(), value);
        }
        assert_eq!(vars["SNOWGATE_WAREHOUSE__KIND"], "snowflake", "{replica} runs the production shape");
        sets.push(("docker-compose.yml", vars));
    }
    let mut production = base.clone();
    production.extend(secret.clone());
    sets.push(("k8s/base", production.clone()));
    for overlay in std::fs::read_dir(root.join("k8s/overlays")).unwrap() {
        let path = overlay.unwrap().path().join("configmap.yaml");
        if path.exists() {
            let mut merged = production.clone();
            merged.extend(manifest_entries(&path));
            sets.push(("an overlay", merged));
        }
    }
    for (source, vars) in sets {
        // Snowflake's password has its own variable (as snowflake's own tools read it).
        let ours = |k: &str| k.starts_with("SNOWGATE_") || k == "SNOWFLAKE_PASSWORD";
        let mut vars: BTreeMap<String, String> = vars.into_iter().filter(|(k, _)| ours(k)).collect();
        assert!(!vars.is_empty(), "{source} sets no SNOWGATE_ variable");
        // The key file is mounted in the pod; here any readable path stands in for it.
        if vars.contains_key("SNOWGATE_WAREHOUSE__SNOWFLAKE__PRIVATE_KEY_PATH") {
            let key = root.join("Cargo.toml").display().to_string();
            vars.insert("SNOWGATE_WAREHOUSE__SNOWFLAKE__PRIVATE_KEY_PATH".into(), key);
        }
        let (ok, text) = check_config(&vars);
        assert!(ok, "{source}: snowgate check-config refused {vars:?}:\n{text}");
    }

    // The check can fail: a key the gateway does not read is refused.
    let mut typo = dockerfile_env(&root.join("Dockerfile"));
    typo.insert("SNOWGATE_SERVER__LISTEN_ADDR".into(), "0.0.0.0:8080".into());
    let (ok, text) = check_config(&typo);
    assert!(!ok, "an unknown key was accepted:\n{text}");
}
